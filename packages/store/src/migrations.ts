/**
 * The schema, as a numbered, append-only list: a released migration is never edited, only
 * followed by a new one. Each runs once, in a transaction, under an advisory lock so that
 * replicas starting together do not race.
 */
export const migrations: readonly { id: number; name: string; sql: string }[] = [
  {
    id: 1,
    name: 'resources, change log, version counter',
    sql: `
      CREATE TABLE postern_version (id int PRIMARY KEY CHECK (id = 1), version bigint NOT NULL, compacted bigint NOT NULL DEFAULT 0);
      INSERT INTO postern_version (id, version) VALUES (1, 0);
      CREATE TABLE postern_resources (
        kind text NOT NULL,
        name text NOT NULL,
        uid uuid NOT NULL UNIQUE,
        version bigint NOT NULL,
        body jsonb NOT NULL,
        PRIMARY KEY (kind, name)
      );
      CREATE TABLE postern_changes (
        version bigint PRIMARY KEY,
        kind text NOT NULL,
        name text NOT NULL,
        type text NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
        body jsonb NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
      );
      CREATE TABLE postern_internal (key text PRIMARY KEY, value jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
    `,
  },
  {
    id: 2,
    name: 'address allocations',
    sql: `
      CREATE TABLE postern_addresses (
        pool text NOT NULL,
        address_offset int NOT NULL,
        owner text NOT NULL,
        allocated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pool, address_offset),
        UNIQUE (pool, owner)
      );
    `,
  },
  {
    id: 3,
    name: 'address allocation cursor',
    // Where each pool's next-fit search starts. Deriving it from the highest address in use (as
    // before) handed a freed top address straight back out; the cursor remembers it was given.
    sql: `
      CREATE TABLE postern_address_cursors (pool text PRIMARY KEY, last_offset int NOT NULL);
      INSERT INTO postern_address_cursors (pool, last_offset)
        SELECT pool, max(address_offset) FROM postern_addresses WHERE owner NOT LIKE '(reserved:%' GROUP BY pool;
    `,
  },
];
