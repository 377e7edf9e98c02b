"""Signed event webhooks back to the application (issue 16).

Events come from the audit trail's feed (``Broker.events_after``): the dispatcher turns
new audit events into deliveries, one per subscribed endpoint, stored durably beside the
queue (:mod:`.store`); the sender posts them, signed per Standard Webhooks, retrying with
backoff for up to a day. Both run in their own process (``emailq webhooks``), so a slow or
failing receiver never holds up a mail worker.
"""
