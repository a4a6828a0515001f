// Progressive enhancement only: every page works without this file.
"use strict";

// "Copy" beside a revealed key or secret: shown only where the clipboard can be written.
function enableCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const field = document.getElementById(button.dataset.copy);
    const status = document.querySelector(".copied");
    if (!field) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
        if (status) status.textContent = "Copied.";
      } catch (error) {
        if (status) status.textContent = "Select the text and copy it with your keyboard.";
      }
    });
  }
}

// A revealed value is blanked when the page is left, so the back/forward cache never shows it again.
function forgetOneTimeValues() {
  window.addEventListener("pagehide", () => {
    for (const field of document.querySelectorAll("[data-one-time]")) {
      field.value = "";
      field.removeAttribute("value");
    }
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && document.querySelector("[data-one-time]")) window.location.replace("/ui/keys");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  enableCopyButtons();
  forgetOneTimeValues();
});
