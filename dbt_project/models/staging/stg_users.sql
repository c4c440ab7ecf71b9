{#- A plain view: raw.users is replaced whole on each load and its ingest rules keep user ids unique. -#}

select
    user_id,
    signup_date,
    lower(trim(plan)) as plan,
    upper(trim(country)) as country,
    lower(trim(acquisition_channel)) as acquisition_channel
from {{ source('raw', 'users') }}
