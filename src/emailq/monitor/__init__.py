"""The monitor: per-lane history with mergeable percentiles, alert rules and notices.

Workers record what they settle (:mod:`.recorder`) and publish it to the broker; one
monitor per queue at a time (a lease in the broker, :mod:`.store`) turns those samples and
the queue's depth into a snapshot every interval (:mod:`.snapshot`), keeps a bounded
history, evaluates alert rules (:mod:`.rules`) and sends notices (:mod:`.notify`).
The API (:mod:`.routes`), ``emailq status --watch``, ``emailq report`` and the dashboard read
that history.
"""
