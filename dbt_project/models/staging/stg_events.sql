with source as (
    select * from {{ source('raw', 'events') }}
)

select
    event_id,
    user_id,
    lower(trim(event_type)) as event_type,
    event_ts,
    cast(event_ts as date) as event_date,
    value
from source
qualify row_number() over (partition by event_id order by _loaded_at desc) = 1
