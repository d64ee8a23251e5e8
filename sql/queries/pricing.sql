-- Prices, the model catalogue and model aliases: what the `pricing` commands and the daily upkeep run.

-- name: list_pricing
-- The price row in force now of every model, with all its rates (price_rates) as JSON text, read exactly.
SELECT DISTINCT ON (p.model) p.model, p.input_per_mtok, p.cached_input_per_mtok, p.output_per_mtok,
       p.cache_write_per_mtok, p.effective_from, price_rates(p)::text AS rates
FROM model_pricing p
WHERE p.effective_from <= now()
ORDER BY p.model, p.effective_from DESC;

-- name: set_pricing
INSERT INTO model_pricing (model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from)
VALUES (:model, CAST(:input AS numeric), CAST(:cached_input AS numeric), CAST(:output AS numeric),
        coalesce(CAST(:effective_from AS timestamptz), now()))
ON CONFLICT (model, effective_from) DO UPDATE
SET input_per_mtok = EXCLUDED.input_per_mtok, cached_input_per_mtok = EXCLUDED.cached_input_per_mtok,
    output_per_mtok = EXCLUDED.output_per_mtok
RETURNING model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from;

-- name: import_model_catalogue
-- :models as chalicelib/pricing.py normalises them; new prices apply from :effective_from (NULL: now), a
-- model priced for the first time from :first_from. The report as JSON text, its prices read exactly.
SELECT import_model_catalogue(CAST(:models AS jsonb), coalesce(CAST(:effective_from AS timestamptz), now()),
                              CAST(:first_from AS timestamptz))::text AS report;

-- name: set_model_alias
-- NULL when :model is neither priced nor in the catalogue (under its own name or as a dated snapshot's base).
INSERT INTO model_aliases AS a (name, model)
SELECT :alias_name, target.model
FROM (SELECT CAST(:model AS text) AS model) target
WHERE EXISTS (SELECT 1 FROM model_pricing p WHERE p.model IN (target.model, pricing_model_name(target.model)))
   OR EXISTS (SELECT 1 FROM model_catalogue c WHERE c.model IN (target.model, pricing_model_name(target.model)))
ON CONFLICT (name) DO UPDATE SET model = EXCLUDED.model, created_at = now()
RETURNING a.name, a.model;

-- name: remove_model_alias
DELETE FROM model_aliases WHERE name = :alias_name
RETURNING name, model;

-- name: list_model_aliases
SELECT name, model, created_at FROM model_aliases ORDER BY name;
