{{
    config(
        materialized='incremental',
        incremental_strategy='event_time_window',
        event_time='activity_date',
    )
}}

{#- The run's window of days (macros/event_time_window.sql), read from stg_events by event_ts. -#}
{%- set window = event_time_window() %}

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
{%- if window %}
where event_ts >= cast('{{ window.start }}' as timestamp) and event_ts < cast('{{ window.end }}' as timestamp)
{%- endif %}
group by user_id, event_date
