{{ config(event_time='event_ts') }}

{#-
    A plain view: the ingest guarantees one row per event id (a reload replaces its own days and
    an id already loaded for another day is refused), so filters on event_ts reach the raw scan
    and a day's build reads that day only.
-#}

select
    event_id,
    user_id,
    lower(trim(event_type)) as event_type,
    event_ts,
    cast(event_ts as date) as event_date,
    value
from {{ source('raw', 'events') }}
