with source as (
    select * from {{ source('raw', 'users') }}
)

select
    user_id,
    signup_date,
    lower(trim(plan)) as plan,
    upper(trim(country)) as country,
    lower(trim(acquisition_channel)) as acquisition_channel
from source
qualify row_number() over (partition by user_id order by _loaded_at desc) = 1
