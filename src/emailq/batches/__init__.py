"""Guest lists you can follow (issue 16): a batch id per ``POST /v1/emails/batch``, its
record beside the queue (:mod:`.registry`), its status read from the broker's batch index
(:mod:`.status`), and cancelling or retrying what is left (:mod:`.actions`)."""
