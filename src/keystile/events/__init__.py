"""Events: a transactional outbox written with each change, delivered as signed Standard Webhooks.

`outbox.emit` adds an event to the change's own transaction; `dispatcher.Dispatcher` fans it out to the owner's
subscribed endpoints and delivers it with retries; `expiry.ExpiryScan` emits the time-based events. See
docs/WEBHOOKS.md.
"""
