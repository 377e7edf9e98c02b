-- The embedded broker's schema. One row per message; the partial indexes are the queues.
CREATE TABLE IF NOT EXISTS messages (
    id              TEXT PRIMARY KEY,
    lane            TEXT NOT NULL,
    state           TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,             -- 0: no limit by count, only by age
    token           INTEGER NOT NULL DEFAULT 0,   -- fencing token: +1 at every lease, never reset
    owner           TEXT,
    lease_expires   REAL,
    enqueued_at     REAL NOT NULL,
    updated_at      REAL NOT NULL,
    available_at    REAL NOT NULL,                -- ready since (queued) or due at (scheduled, retrying)
    last_error      TEXT,
    idempotency_key TEXT,
    expires_at      REAL,                         -- given up on from then; NULL: never (< 0.3)
    recipients      TEXT,                         -- left after a partial delivery; NULL: all
    batch_id        TEXT,                         -- the guest list it came with (emailq.batches)
    ceremony_at     REAL                          -- wedding mail's ceremony (the autoscaler's)
) WITHOUT ROWID;

-- Bodies apart from the rows that a lease and a settle rewrite: a row of messages fills a
-- sliver of a page rather than half of one, so leasing 100 writes a few pages, not 50+.
-- Deleted when the mail is sent (unless kept), when dead mail's requeue window ends, and
-- with the record. (sqlite.py's _BODIES_TABLE makes it in files from before it.)
CREATE TABLE IF NOT EXISTS bodies (id TEXT PRIMARY KEY, payload BLOB NOT NULL);

CREATE INDEX IF NOT EXISTS messages_ready ON messages (lane, available_at, id)
    WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS messages_delayed ON messages (available_at)
    WHERE state IN ('scheduled', 'retrying');
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease_expires)
    WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, lane, updated_at);
-- A tenant's counts, and its oldest ready message per lane (MIN(available_at): one seek).
-- It replaced messages_tenant (tenant, state, lane), which files made before still hold.
DROP INDEX IF EXISTS messages_tenant;
CREATE INDEX IF NOT EXISTS messages_tenant_age ON messages (tenant, state, lane, available_at);
-- Live wedding mail by ceremony: rows leave it as they are sent, so it stays small.
CREATE INDEX IF NOT EXISTS messages_ceremony ON messages (ceremony_at)
    WHERE ceremony_at IS NOT NULL AND state IN ('queued', 'scheduled', 'leased', 'retrying');
CREATE INDEX IF NOT EXISTS messages_batch ON messages (batch_id, id) WHERE batch_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS idempotency (
    scope      TEXT PRIMARY KEY,                  -- tenant, US (0x1f), key
    id         TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS lane_credit (
    lane   TEXT PRIMARY KEY,
    credit INTEGER NOT NULL
) WITHOUT ROWID;

-- The audit trail (emailq.privacy.audit): written in the transaction that changes the state.
-- Appended in time order, so the oldest rows are the first by seq (what purge deletes).
CREATE TABLE IF NOT EXISTS audit_events (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    at         REAL NOT NULL,
    kind       TEXT NOT NULL,
    detail     TEXT NOT NULL                      -- JSON object; never an address or a body
);
CREATE INDEX IF NOT EXISTS audit_message ON audit_events (message_id);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit_events (tenant, at);

-- Which messages name an address, by its keyed hash (emailq.privacy.erasure): erasure and
-- access find them without reading a body.
CREATE TABLE IF NOT EXISTS recipient_index (
    hash       TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (hash, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipient_message ON recipient_index (message_id);

-- Named leases: one holder at a time (one autoscaler per queue).
CREATE TABLE IF NOT EXISTS named_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
