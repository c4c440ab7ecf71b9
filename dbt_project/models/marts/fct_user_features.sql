{{
    config(
        materialized='incremental',
        incremental_strategy='microbatch',
        event_time='snapshot_date',
        batch_size='day',
        begin=var('begin'),
    )
}}

{#-
    Features of a user as of the end of snapshot_date, from the 30 days that end on it. One batch
    per snapshot date, so a build of months holds one day's users in memory, and a day reads only
    the activity it needs: its 30-day window, and a year of payment days. Outside a batch (dbt
    compile, docs) the model shows the latest day.
-#}

{%- set batch = model.get('batch') -%}
{%- if batch and batch.get('event_time_start') -%}
    {%- set snapshot_day = "cast('" ~ batch.event_time_start.strftime('%Y-%m-%d') ~ "' as date)" -%}
{%- else -%}
    {%- set snapshot_day = "(select max(activity_date) from " ~ ref('int_user_daily_activity').render() ~ ")" -%}
{%- endif %}

{#- Each CTE reads the activity table with its own date filter, so DuckDB skips the other days. -#}

with snapshot_bounds as (
    select min(activity_date) as first_activity, max(activity_date) as last_activity
    from {{ ref('int_user_daily_activity').render() }}
),

activity as (
    select * from {{ ref('int_user_daily_activity').render() }}
    where activity_date between {{ snapshot_day }} - 29 and {{ snapshot_day }}
),

snapshots as (
    select {{ snapshot_day }} as snapshot_date
    from snapshot_bounds
    where {{ snapshot_day }} between first_activity and last_activity
),

last_30_days as (
    select
        snapshots.snapshot_date,
        activity.*,
        snapshots.snapshot_date - activity.activity_date as days_ago,
        activity.engagement_events > 0 as is_active_day
    from snapshots
    inner join activity
        on activity.activity_date between snapshots.snapshot_date - 29 and snapshots.snapshot_date
),

windows as (
    select
        user_id,
        snapshot_date,
        count(*) filter (where is_active_day and days_ago < 7) as active_days_7d,
        count(*) filter (where is_active_day and days_ago < 14) as active_days_14d,
        count(*) filter (where is_active_day) as active_days_30d,
        coalesce(sum(engagement_events) filter (where days_ago < 7), 0) as engagement_events_7d,
        coalesce(sum(engagement_events) filter (where days_ago < 14), 0) as engagement_events_14d,
        sum(engagement_events) as engagement_events_30d,
        coalesce(sum(lesson_views) filter (where days_ago < 7), 0) as lesson_views_7d,
        coalesce(sum(lesson_views) filter (where days_ago < 14), 0) as lesson_views_14d,
        sum(lesson_views) as lesson_views_30d,
        coalesce(sum(quiz_attempts) filter (where days_ago < 7), 0) as quiz_attempts_7d,
        sum(quiz_attempts) as quiz_attempts_30d,
        coalesce(sum(video_minutes) filter (where days_ago < 7), 0) as video_minutes_7d,
        coalesce(sum(video_minutes) filter (where days_ago < 14), 0) as video_minutes_14d,
        sum(video_minutes) as video_minutes_30d,
        min(days_ago) filter (where is_active_day) as days_since_last_activity,
        sum(payments) as payments_30d,
        sum(failed_payments) as failed_payments_30d,
        sum(support_tickets) as support_tickets_30d
    from last_30_days
    group by user_id, snapshot_date
    having count(*) filter (where is_active_day) > 0
),

payment_days as (
    select user_id, activity_date as payment_date
    from {{ ref('int_user_daily_activity').render() }}
    where payments > 0
        and activity_date between {{ snapshot_day }} - 365 and {{ snapshot_day }}
),

with_last_payment as (
    select windows.*, payment_days.payment_date as last_payment_date
    from windows
    asof left join payment_days
        on windows.user_id = payment_days.user_id
        and windows.snapshot_date >= payment_days.payment_date
)

select
    f.user_id,
    f.snapshot_date,
    cast(f.active_days_7d as integer) as active_days_7d,
    cast(f.active_days_14d as integer) as active_days_14d,
    cast(f.active_days_30d as integer) as active_days_30d,
    cast(f.engagement_events_7d as integer) as engagement_events_7d,
    cast(f.engagement_events_14d as integer) as engagement_events_14d,
    cast(f.engagement_events_30d as integer) as engagement_events_30d,
    cast(f.lesson_views_7d as integer) as lesson_views_7d,
    cast(f.lesson_views_14d as integer) as lesson_views_14d,
    cast(f.lesson_views_30d as integer) as lesson_views_30d,
    cast(f.quiz_attempts_7d as integer) as quiz_attempts_7d,
    cast(f.quiz_attempts_30d as integer) as quiz_attempts_30d,
    round(f.video_minutes_7d, 1) as video_minutes_7d,
    round(f.video_minutes_14d, 1) as video_minutes_14d,
    round(f.video_minutes_30d, 1) as video_minutes_30d,
    round((f.engagement_events_7d / 7.0) / (f.engagement_events_30d / 30.0), 4) as engagement_trend_7d_30d,
    case
        when f.lesson_views_30d = 0 then 1.0
        else round((f.lesson_views_7d / 7.0) / (f.lesson_views_30d / 30.0), 4)
    end as lesson_trend_7d_30d,
    cast(f.days_since_last_activity as integer) as days_since_last_activity,
    cast(f.snapshot_date - u.signup_date as integer) as tenure_days,
    u.plan,
    u.acquisition_channel,
    cast(f.payments_30d as integer) as payments_30d,
    cast(f.failed_payments_30d as integer) as failed_payments_30d,
    cast(least(coalesce(f.snapshot_date - f.last_payment_date, 365), 365) as integer) as days_since_last_payment,
    cast(f.support_tickets_30d as integer) as support_tickets_30d
from with_last_payment as f
inner join {{ ref('stg_users') }} as u
    on f.user_id = u.user_id
