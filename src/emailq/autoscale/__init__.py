"""The autoscaler: how many workers the queue needs now (``policy``), from what the broker
shows (``observe``) and the week's pattern (``pattern``); ``controller`` runs it against a
pool, once per queue (a lease in the broker)."""
