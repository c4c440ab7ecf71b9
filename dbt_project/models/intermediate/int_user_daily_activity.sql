{{
    config(
        materialized='incremental',
        incremental_strategy='microbatch',
        event_time='activity_date',
        batch_size='day',
        begin=var('begin'),
    )
}}

{#- One batch per day: dbt filters stg_events to the batch's day by its event_ts. -#}

select
    user_id,
    event_date as activity_date,
    count(*) filter (where event_type not in ('payment', 'payment_failed')) as engagement_events,
    count(*) filter (where event_type = 'login') as logins,
    count(*) filter (where event_type = 'lesson_view') as lesson_views,
    count(*) filter (where event_type = 'quiz_attempt') as quiz_attempts,
    coalesce(sum(value) filter (where event_type = 'video_minutes'), 0) as video_minutes,
    count(*) filter (where event_type = 'support_ticket') as support_tickets,
    count(*) filter (where event_type = 'payment') as payments,
    coalesce(sum(value) filter (where event_type = 'payment'), 0) as payment_amount_usd,
    count(*) filter (where event_type = 'payment_failed') as failed_payments
from {{ ref('stg_events') }}
group by user_id, event_date
