"""The dashboard (`/ui/`, API.md section 7): server-rendered pages for people, over the same services as the API.

`router.install(app)` adds the pages, their static assets and the security headers they are served with. Every change
goes through the services (`KeyManager`, `IdentityManager`, `Webhooks`): the pages parse forms, call, and render.
"""
