-- The schema strata-publisher reads with --source postgres://… (and
-- `import` writes): the seed's "Recommended Approach: Hybrid" tables,
-- plus what Strata needs. Safe to run on a database that has the seed's
-- tables already: every statement adds only what is missing.
--
--   tenants.slug                  Strata's tenant id ([a-z0-9-], 3 to 64)
--                                 when tenants.id is a UUID; a tenant
--                                 without one is known by its UUID.
--   tenant_configurations.config  every field of a tenant file except
--                                 tenant_id (the slug), version (the
--                                 column) and agent.prompt (the
--                                 layer2_system_prompt column); `name`
--                                 defaults to tenants.name.
--   canary_percent                the seed's canary column: a tenant's
--                                 second active row with it set is the
--                                 tenant's canary (a share of sessions);
--                                 two active rows without it are refused.
--   strata_publish_problems       why a tenant's row was held back, written
--                                 by `strata-publisher follow`.
--   the trigger                   NOTIFY strata_tenant_configurations on
--                                 every change, which `follow` listens to.

CREATE TABLE IF NOT EXISTS tenants (
    id UUID PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS slug TEXT UNIQUE;

CREATE TABLE IF NOT EXISTS tenant_configurations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),

    -- Human-friendly version
    version VARCHAR(20) NOT NULL, -- e.g., "1.2.3"

    -- Immutable identifier
    version_hash VARCHAR(64) NOT NULL, -- SHA-256 hash

    -- Configuration
    layer2_system_prompt TEXT NOT NULL,

    -- Metadata
    is_active BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMP DEFAULT NOW(),
    created_by UUID,

    -- Rollback support
    parent_version_id UUID REFERENCES tenant_configurations(id),

    UNIQUE(tenant_id, version),
    UNIQUE(tenant_id, version_hash)
);
ALTER TABLE tenant_configurations ADD COLUMN IF NOT EXISTS canary_percent SMALLINT;
ALTER TABLE tenant_configurations ADD COLUMN IF NOT EXISTS config JSONB NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS idx_tenant_configs_active
    ON tenant_configurations(tenant_id) WHERE is_active;

CREATE TABLE IF NOT EXISTS strata_publish_problems (
    channel TEXT NOT NULL,
    tenant TEXT NOT NULL,
    row_id TEXT NOT NULL,
    version TEXT NOT NULL,
    field TEXT NOT NULL,
    reason TEXT NOT NULL,
    noticed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (channel, tenant, row_id, field)
);

CREATE OR REPLACE FUNCTION strata_notify_change() RETURNS trigger AS $$
BEGIN
    -- One notification per statement and tenant: NOTIFY folds identical
    -- payloads within a transaction.
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('strata_tenant_configurations', OLD.tenant_id::text);
    ELSE
        PERFORM pg_notify('strata_tenant_configurations', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION strata_notify_tenant() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('strata_tenant_configurations',
                      CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS strata_notify ON tenant_configurations;
CREATE TRIGGER strata_notify
    AFTER INSERT OR UPDATE OR DELETE ON tenant_configurations
    FOR EACH ROW EXECUTE FUNCTION strata_notify_change();

DROP TRIGGER IF EXISTS strata_notify ON tenants;
CREATE TRIGGER strata_notify
    AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION strata_notify_tenant();

-- TRUNCATE fires no row trigger: one notification for the statement.
CREATE OR REPLACE FUNCTION strata_notify_truncate() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('strata_tenant_configurations', 'truncate');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS strata_notify_truncate ON tenant_configurations;
CREATE TRIGGER strata_notify_truncate
    AFTER TRUNCATE ON tenant_configurations
    FOR EACH STATEMENT EXECUTE FUNCTION strata_notify_truncate();

-- What the follower's role needs, for a role named strata_publisher:
--   GRANT SELECT ON tenants, tenant_configurations TO strata_publisher;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON strata_publish_problems TO strata_publisher;
