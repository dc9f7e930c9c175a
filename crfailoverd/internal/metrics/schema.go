package metrics

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// migration is one versioned step of the schema. Each is applied once, in
// its own transaction, and recorded in schema_migrations.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations are applied in order. Never edit or renumber a released
// migration: append a new one.
var migrations = []migration{
	{1, "create the record tables", schemaV1},
	{2, "failover phase durations view", schemaV2},
}

// migrationLock is the key of the advisory lock that serializes the
// migrations of daemons sharing a database.
const migrationLock int64 = 0x637266_6d657472 // "crf" "metr"

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

// schemaV1 creates the tables. Times are timestamptz, sizes bigint bytes,
// durations bigint milliseconds, CRIU's statistics one column each (CRIU's
// times in microseconds), NULL when the dump statistics were not available.
const schemaV1 = `
CREATE TABLE checkpoints (
    id                     uuid        PRIMARY KEY,
    workload               text        NOT NULL,
    node                   text        NOT NULL,
    method                 text        NOT NULL,
    seq                    bigint,
    started_at             timestamptz NOT NULL,
    duration_ms            bigint      NOT NULL,
    bytes                  bigint      NOT NULL,
    ok                     boolean     NOT NULL,
    error                  text,
    freezing_time_us       bigint,
    frozen_time_us         bigint,
    memdump_time_us        bigint,
    memwrite_time_us       bigint,
    pages_scanned          bigint,
    pages_skipped_parent   bigint,
    pages_written          bigint,
    pages_lazy             bigint,
    page_pipes             bigint,
    page_pipe_bufs         bigint,
    irmap_resolve_us       bigint,
    shpages_scanned        bigint,
    shpages_skipped_parent bigint,
    shpages_written        bigint,
    recorded_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkpoints_workload_started_idx ON checkpoints (workload, started_at);
CREATE INDEX checkpoints_started_idx ON checkpoints (started_at);

CREATE TABLE transfers (
    id          uuid        PRIMARY KEY,
    workload    text        NOT NULL,
    seq         bigint,
    from_node   text        NOT NULL,
    to_node     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms bigint      NOT NULL,
    bytes       bigint      NOT NULL,
    ok          boolean     NOT NULL,
    error       text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transfers_workload_started_idx ON transfers (workload, started_at);
CREATE INDEX transfers_workload_seq_idx ON transfers (workload, seq);

CREATE TABLE restores (
    id                uuid        PRIMARY KEY,
    workload          text        NOT NULL,
    node              text        NOT NULL,
    checkpoint_seq    bigint,
    checkpoint_age_ms bigint,
    started_at        timestamptz NOT NULL,
    duration_ms       bigint      NOT NULL,
    outcome           text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    error             text,
    reason            text,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX restores_workload_started_idx ON restores (workload, started_at);

CREATE TABLE failovers (
    id          uuid        PRIMARY KEY,
    workload    text        NOT NULL,
    epoch       bigint,
    reason      text,
    from_node   text,
    to_node     text,
    detected_at timestamptz,
    decided_at  timestamptz,
    restored_at timestamptz,
    error       text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failovers_workload_detected_idx ON failovers (workload, detected_at);
CREATE INDEX failovers_decided_idx ON failovers (decided_at);
`

// schemaV2 adds a view of the failover phases in milliseconds.
const schemaV2 = `
CREATE VIEW failover_durations AS
SELECT id, workload, epoch, reason, from_node, to_node, detected_at, decided_at, restored_at, error,
       (EXTRACT(EPOCH FROM decided_at - detected_at) * 1000)::bigint  AS decide_ms,
       (EXTRACT(EPOCH FROM restored_at - decided_at) * 1000)::bigint  AS restore_ms,
       (EXTRACT(EPOCH FROM restored_at - detected_at) * 1000)::bigint AS total_ms
FROM failovers;
`

// migrate brings the schema up to date. It returns the versions it
// applied and those the database has that steps does not know (written
// by a newer daemon). Concurrent migrations (several daemons starting on one
// database) are serialized by an advisory lock; each migration runs in its
// own transaction and is recorded with it.
func migrate(ctx context.Context, conn *pgx.Conn, steps []migration) (done, unknown []int, err error) {
	applied := map[int]bool{}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, createMigrationsTable); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "SELECT version FROM schema_migrations")
		if err != nil {
			return err
		}
		versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		for _, v := range versions {
			applied[int(v)] = true
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read schema version: %w", err)
	}
	known := map[int]bool{}
	for _, m := range steps {
		known[m.version] = true
	}
	for v := range applied {
		if !known[v] {
			unknown = append(unknown, v)
		}
	}
	slices.Sort(unknown)
	for _, m := range steps {
		if applied[m.version] {
			continue
		}
		var did bool
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			did = false
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
				return err
			}
			var exists bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", m.version).Scan(&exists); err != nil {
				return err
			}
			if exists { // another daemon applied it meanwhile
				return nil
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
				return err
			}
			did = true
			return nil
		})
		if err != nil {
			return done, unknown, fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
		}
		if did {
			done = append(done, m.version)
		}
	}
	return done, unknown, nil
}
