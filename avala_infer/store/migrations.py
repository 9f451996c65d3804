"""The store's schema as named, ordered migrations; each runs once, in its own transaction, and is recorded in
``schema_migrations``. Never edit a released migration: add the next one."""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_projects_datasets_items_tasks",
        """
        CREATE TABLE projects (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            data_type TEXT NOT NULL CHECK (data_type IN ('image', 'text')),
            status TEXT NOT NULL DEFAULT 'active',
            ontology TEXT NOT NULL DEFAULT '[]',       -- JSON list of label names; position = stable class id
            models TEXT NOT NULL DEFAULT '{}',         -- JSON {model_type: model name / spec path}
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE datasets (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            slug TEXT NOT NULL UNIQUE,
            data_type TEXT NOT NULL CHECK (data_type IN ('image', 'text')),
            project_uid TEXT REFERENCES projects (uid),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            dataset_uid TEXT NOT NULL REFERENCES datasets (uid),
            key TEXT NOT NULL,
            path TEXT,                                  -- the file, or NULL for a text stored inline
            text TEXT,                                  -- a text item's text when not read from a whole file
            size INTEGER NOT NULL,
            content_hash TEXT NOT NULL,                 -- sha256 of the bytes (of the text for inline texts)
            created_at TEXT NOT NULL,
            UNIQUE (dataset_uid, key)
        );
        CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            project_uid TEXT NOT NULL REFERENCES projects (uid),
            item_uid TEXT NOT NULL REFERENCES items (uid),
            type TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (project_uid, item_uid)
        );
        CREATE INDEX tasks_by_project ON tasks (project_uid, id);
        """,
    ),
    (
        "0002_jobs_and_results",
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            project_uid TEXT NOT NULL REFERENCES projects (uid),
            model_type TEXT NOT NULL,
            model TEXT NOT NULL,
            confidence_threshold REAL NOT NULL,
            labels TEXT NOT NULL DEFAULT '[]',
            dry_run INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            total_items INTEGER NOT NULL DEFAULT 0,
            processed_items INTEGER NOT NULL DEFAULT 0,
            successful_items INTEGER NOT NULL DEFAULT 0,
            failed_items INTEGER NOT NULL DEFAULT 0,
            skipped_items INTEGER NOT NULL DEFAULT 0,
            error_message TEXT,
            summary TEXT,                               -- JSON
            worker TEXT,                                -- host:pid of the worker holding the job
            lease_until REAL,                           -- unix time; a running job whose lease ran out is taken over
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            started_at TEXT,
            completed_at TEXT
        );
        CREATE INDEX jobs_by_status ON jobs (status, id);
        CREATE TABLE job_tasks (                        -- one row per task a job has finished with, never two
            job_uid TEXT NOT NULL REFERENCES jobs (uid),
            task_uid TEXT NOT NULL REFERENCES tasks (uid),
            outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'skipped')),
            error TEXT,
            label_counts TEXT NOT NULL DEFAULT '{}',    -- JSON {label: annotations}
            PRIMARY KEY (job_uid, task_uid)
        ) WITHOUT ROWID;
        CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            task_uid TEXT NOT NULL REFERENCES tasks (uid),
            job_uid TEXT NOT NULL REFERENCES jobs (uid),
            model TEXT NOT NULL,
            model_type TEXT NOT NULL,
            annotations TEXT NOT NULL,                  -- JSON, as the JSONL export's record
            is_draft INTEGER NOT NULL DEFAULT 1,        -- automatic pre-annotations are drafts for a person to review
            created_at TEXT NOT NULL,
            UNIQUE (task_uid, model)
        );
        """,
    ),
    (
        "0003_agents_events_deliveries",
        """
        CREATE TABLE agents (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            description TEXT,
            events TEXT NOT NULL DEFAULT '[]',          -- JSON list of event types
            callback_url TEXT,                          -- NULL: pull mode (executions wait as pending)
            is_active INTEGER NOT NULL DEFAULT 1,
            project_uid TEXT,                           -- NULL: every project
            task_types TEXT NOT NULL DEFAULT '[]',      -- JSON list of model types; empty: all
            secret TEXT NOT NULL,                       -- HMAC-SHA256 key of the signature header
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE events (                           -- the outbox: written in the transaction of its cause
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            project_uid TEXT,
            task_uid TEXT,
            task_types TEXT NOT NULL DEFAULT '[]',      -- JSON: the model types the event concerns
            payload TEXT NOT NULL,                      -- JSON body sent to agents
            created_at TEXT NOT NULL
        );
        CREATE TABLE deliveries (                       -- one per (agent, event): the unit that is retried
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,                   -- X-Avala-Webhook-Delivery: the same on every attempt
            agent_uid TEXT NOT NULL,
            event_uid TEXT NOT NULL REFERENCES events (uid),
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,    -- unix time
            lease_until REAL,                           -- a dispatcher (or a pull consumer) holds it until then
            holder TEXT,
            action TEXT,                                -- pull mode: approve | reject | flag | skip
            reason TEXT,
            created_at TEXT NOT NULL,
            completed_at TEXT,
            UNIQUE (agent_uid, event_uid)
        );
        CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
        CREATE TABLE executions (                       -- one per delivery attempt (and per pull-mode answer)
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            agent_uid TEXT NOT NULL,
            delivery_uid TEXT NOT NULL,
            event_type TEXT NOT NULL,
            task_uid TEXT,
            status TEXT NOT NULL,                       -- succeeded | failed | pending | running
            error TEXT,
            response_status INTEGER,
            response_excerpt TEXT,
            action TEXT,
            started_at TEXT,
            completed_at TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX executions_by_agent ON executions (agent_uid, id);
        """,
    ),
    (
        "0004_execution_reason",
        """
        ALTER TABLE executions ADD COLUMN reason TEXT;  -- a pull consumer's reason for its action
        UPDATE executions SET reason = error, error = NULL WHERE action IS NOT NULL;
        """,
    ),
    (
        "0005_item_mtime",
        """
        ALTER TABLE items ADD COLUMN mtime_ns INTEGER;  -- the file's mtime when hashed: a re-import hashes it again
                                                         -- only when its size or mtime changed (NULL: unknown)
        CREATE INDEX items_by_path ON items (dataset_uid, path);
        """,
    ),
    (
        "0006_job_aggregation",
        """
        ALTER TABLE jobs ADD COLUMN aggregation TEXT;  -- NER jobs: how tokens become entities (NULL: the default)
        """,
    ),
    (
        "0007_job_settings_and_result_history",
        """
        ALTER TABLE jobs ADD COLUMN label_map TEXT;       -- JSON {model label: project label, or null to drop}
        ALTER TABLE jobs ADD COLUMN settings_hash TEXT;   -- the fingerprint of the settings that change results
        ALTER TABLE jobs ADD COLUMN overwrite INTEGER NOT NULL DEFAULT 0;  -- 1: relabel even identical settings
        CREATE TABLE results_v2 (                         -- a task keeps every job's result (not one per model)
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            task_uid TEXT NOT NULL REFERENCES tasks (uid),
            job_uid TEXT NOT NULL REFERENCES jobs (uid),
            model TEXT NOT NULL,
            model_type TEXT NOT NULL,
            annotations TEXT NOT NULL,
            is_draft INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            settings_hash TEXT,                            -- the job's; NULL for results made before fingerprints
            UNIQUE (task_uid, job_uid)
        );
        INSERT INTO results_v2 (id, uid, task_uid, job_uid, model, model_type, annotations, is_draft, created_at)
            SELECT id, uid, task_uid, job_uid, model, model_type, annotations, is_draft, created_at FROM results;
        DROP TABLE results;
        ALTER TABLE results_v2 RENAME TO results;
        CREATE INDEX results_by_task ON results (task_uid, model, settings_hash);
        ALTER TABLE job_tasks ADD COLUMN result_uid TEXT; -- the result the job made, or the identical one it kept
        UPDATE job_tasks SET result_uid = COALESCE(
            (SELECT r.uid FROM results r WHERE r.task_uid = job_tasks.task_uid AND r.job_uid = job_tasks.job_uid),
            (SELECT r.uid FROM results r JOIN jobs j ON j.uid = job_tasks.job_uid
             WHERE job_tasks.outcome = 'skipped' AND r.task_uid = job_tasks.task_uid AND r.model = j.model));
        CREATE INDEX job_tasks_by_task ON job_tasks (task_uid);
        """,
    ),
    (
        "0008_ontology_per_model_type",
        """
        ALTER TABLE projects ADD COLUMN type_ontologies TEXT NOT NULL DEFAULT '{}';  -- JSON {model type: labels}
        UPDATE projects SET type_ontologies = (
            SELECT json_group_object(mt, json(projects.ontology)) FROM (
                SELECT DISTINCT r.model_type AS mt FROM results r JOIN tasks t ON t.uid = r.task_uid
                WHERE t.project_uid = projects.uid))
            WHERE ontology != '[]' AND EXISTS (
                SELECT 1 FROM results r JOIN tasks t ON t.uid = r.task_uid WHERE t.project_uid = projects.uid);
        UPDATE projects SET ontology = '[]' WHERE type_ontologies != '{}';  -- the list moved to those types
        CREATE TABLE model_labels (                       -- a model's labels, seen when a job loaded it
            model TEXT PRIMARY KEY,
            labels TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0009_agent_kind",
        """
        ALTER TABLE agents ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'  -- or 'webhook': a /webhooks/ subscription
            CHECK (kind IN ('agent', 'webhook'));
        CREATE INDEX agents_by_kind ON agents (kind, id);
        CREATE INDEX executions_by_delivery ON executions (delivery_uid, id);  -- a delivery's last attempt
        """,
    ),
    (
        "0010_exports",
        """
        CREATE TABLE exports (                          -- a project's results written to <home>/exports/<uid>/
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            project_uid TEXT NOT NULL REFERENCES projects (uid),
            dataset_uid TEXT,                           -- the project's dataset (what the SDK may name instead)
            formats TEXT NOT NULL DEFAULT '["jsonl"]',  -- JSON list of export formats
            model_type TEXT,                            -- NULL: the only model type with results
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'exporting', 'exported', 'failed')),
            error_message TEXT,
            file TEXT,                                  -- the file served, relative to the export's folder
            holder TEXT,                                -- host:pid:random of the thread exporting it
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            started_at TEXT,
            completed_at TEXT
        );
        CREATE INDEX exports_by_status ON exports (status, id);
        """,
    ),
    (
        "0011_inference_providers",
        """
        CREATE TABLE inference_providers (              -- a model of ours (config.model, config.model_type)
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            description TEXT,
            provider_type TEXT NOT NULL,
            config TEXT NOT NULL DEFAULT '{}',          -- JSON
            is_active INTEGER NOT NULL DEFAULT 1,
            project_uid TEXT REFERENCES projects (uid), -- the project it serves its model type for
            last_test_at TEXT,
            last_test_success INTEGER,                  -- NULL: never tested
            last_test_message TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0012_api_keys",
        """
        CREATE TABLE api_keys (                         -- managed keys of the server (avala-infer keys)
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,              -- sha256 hex of the key: the key itself is never stored
            prefix TEXT NOT NULL,                       -- the key's first characters, to recognise it
            created_at TEXT NOT NULL,
            last_used_at TEXT,                          -- updated at most once a minute
            revoked_at TEXT                             -- NULL: active
        );
        CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
        """,
    ),
    (
        "0013_job_executor",
        """
        ALTER TABLE jobs ADD COLUMN executor TEXT;  -- where its predictions run: local or ray (NULL: the worker's)
        """,
    ),
]
