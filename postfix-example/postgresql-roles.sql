-- Least-privilege roles for a replytrack store shared by several hosts (see README.md,
-- "Several hosts"). Run as a PostgreSQL superuser, in the replytrack database, once before
-- the first `replytrack init` and once after it (the second run takes the daemons' write
-- access to the schema version table that init created); safe to run again any time:
--
--   createdb replytrack
--   psql -v ON_ERROR_STOP=1 -d replytrack -f postgresql-roles.sql
--   replytrack --db postgresql://replytrack_owner@db1.example.com/replytrack init
--   psql -v ON_ERROR_STOP=1 -d replytrack -f postgresql-roles.sql
--
-- Three roles:
--   replytrack_owner   owns the tables; only `replytrack init` / `replytrack migrate` use it
--                      (from one admin host, never from a daemon).
--   replytrack_daemon  what the proxies and milters log in as (and `replytrack stop`,
--                      `resume`, `prune`, `import`, `notify`): reads and writes rows, cannot
--                      create, alter or drop anything.
--   replytrack_ops     the listing commands (`messages`, `events`, `campaigns`,
--                      `enrollments`, `export`, `check`): reads only.
-- Passwords are set with \password ROLE in psql (kept out of this file and shell history);
-- hosts read theirs from db_password_file, PGPASSWORD or ~/.pgpass, never from the TOML.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replytrack_owner') THEN
        CREATE ROLE replytrack_owner LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replytrack_daemon') THEN
        CREATE ROLE replytrack_daemon LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replytrack_ops') THEN
        CREATE ROLE replytrack_ops LOGIN;
    END IF;
END
$$;

-- A listing session is read-only even if a grant below were ever widened by mistake.
ALTER ROLE replytrack_ops SET default_transaction_read_only = on;

-- Only the owner creates objects: PostgreSQL 14 and older let every role create tables in
-- the public schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO replytrack_owner;
GRANT USAGE ON SCHEMA public TO replytrack_daemon, replytrack_ops;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO replytrack_owner, replytrack_daemon,'
                   ' replytrack_ops', current_database());
END
$$;

-- Tables the owner creates from now on (every `replytrack migrate`) get the same grants, so
-- an upgrade never leaves the daemons without a table they need.
ALTER DEFAULT PRIVILEGES FOR ROLE replytrack_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO replytrack_daemon;
ALTER DEFAULT PRIVILEGES FOR ROLE replytrack_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO replytrack_daemon;
ALTER DEFAULT PRIVILEGES FOR ROLE replytrack_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO replytrack_ops;

-- Tables that exist already (this file run again after an init).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO replytrack_daemon;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO replytrack_daemon;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO replytrack_ops;

-- The schema version is the owner's to change: the daemons only read it (and refuse to
-- start on a version they do not know). The migration's advisory lock needs no grant.
DO $$
BEGIN
    IF to_regclass('public.replytrack_schema') IS NOT NULL THEN
        REVOKE INSERT, UPDATE, DELETE ON public.replytrack_schema FROM replytrack_daemon;
    END IF;
END
$$;
