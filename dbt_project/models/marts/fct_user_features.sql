{{
    config(
        materialized='incremental',
        incremental_strategy='event_time_window',
        event_time='snapshot_date',
    )
}}

{#-
    Features of a user as of the end of snapshot_date, from the 30 days that end on it, for every
    snapshot date of the run's window (macros/event_time_window.sql) in one statement.

    Rolling sums are window frames over each user's days, so each activity day is read once, not
    once per snapshot it falls in. A user has a row on each day of their *spans*: from an active
    day to 29 days after the last active day of a run of active days less than 31 days apart, on
    the days that have events at all: a day delivered empty has no snapshot, so raw events,
    activity and features always describe the same days.
    DuckDB spills the frames' sort to disk beyond its memory_limit, so memory stays bounded
    however long the window.
-#}

{%- set window = event_time_window() %}

with bounds as (
    select
        {% if window -%}
            greatest(cast('{{ window.start }}' as date), min(activity_date))
        {%- else -%}
            min(activity_date)
        {%- endif %} as first_day,
        {% if window -%}
            least(cast('{{ window.end }}' as date) - 1, max(activity_date))
        {%- else -%}
            max(activity_date)
        {%- endif %} as last_day
    from {{ ref('int_user_daily_activity') }}
),

activity as (
    select activity.*
    from {{ ref('int_user_daily_activity') }} as activity, bounds
    where activity.activity_date between bounds.first_day - 29 and bounds.last_day
),

active_days as (
    select
        user_id,
        activity_date,
        coalesce(
            activity_date - lag(activity_date) over (partition by user_id order by activity_date) > 30, true
        ) as starts_span
    from activity
    where engagement_events > 0
),

numbered_spans as (
    select
        user_id,
        activity_date,
        count(*) filter (where starts_span) over (
            partition by user_id order by activity_date rows unbounded preceding
        ) as span_number
    from active_days
),

spans as (
    select
        numbered_spans.user_id,
        greatest(min(numbered_spans.activity_date), any_value(bounds.first_day)) as span_start,
        least(max(numbered_spans.activity_date) + 29, any_value(bounds.last_day)) as span_end
    from numbered_spans, bounds
    group by numbered_spans.user_id, numbered_spans.span_number
),

span_days as (
    select
        user_id,
        cast(unnest(range(span_start, span_end + 1, interval 1 day)) as date) as snapshot_date
    from spans
    where span_start <= span_end
),

snapshots as (
    select * from span_days
    where snapshot_date in (select activity.activity_date from activity)
),

user_days as (
    select
        coalesce(snapshots.user_id, activity.user_id) as user_id,
        coalesce(snapshots.snapshot_date, activity.activity_date) as day,  -- noqa: RF04
        snapshots.user_id is not null as is_snapshot,
        coalesce(activity.engagement_events, 0) as engagement_events,
        coalesce(activity.lesson_views, 0) as lesson_views,
        coalesce(activity.quiz_attempts, 0) as quiz_attempts,
        coalesce(activity.video_minutes, 0) as video_minutes,
        coalesce(activity.payments, 0) as payments,
        coalesce(activity.failed_payments, 0) as failed_payments,
        coalesce(activity.support_tickets, 0) as support_tickets
    from snapshots
    full outer join activity
        on snapshots.user_id = activity.user_id and snapshots.snapshot_date = activity.activity_date
),

rolling as (
    select
        user_id,
        day as snapshot_date,
        is_snapshot,
        count(*) filter (where engagement_events > 0) over last_7_days as active_days_7d,
        count(*) filter (where engagement_events > 0) over last_14_days as active_days_14d,
        count(*) filter (where engagement_events > 0) over last_30_days as active_days_30d,
        sum(engagement_events) over last_7_days as engagement_events_7d,
        sum(engagement_events) over last_14_days as engagement_events_14d,
        sum(engagement_events) over last_30_days as engagement_events_30d,
        sum(lesson_views) over last_7_days as lesson_views_7d,
        sum(lesson_views) over last_14_days as lesson_views_14d,
        sum(lesson_views) over last_30_days as lesson_views_30d,
        sum(quiz_attempts) over last_7_days as quiz_attempts_7d,
        sum(quiz_attempts) over last_30_days as quiz_attempts_30d,
        sum(video_minutes) over last_7_days as video_minutes_7d,
        sum(video_minutes) over last_14_days as video_minutes_14d,
        sum(video_minutes) over last_30_days as video_minutes_30d,
        day - max(day) filter (where engagement_events > 0) over last_30_days as days_since_last_activity,
        sum(payments) over last_30_days as payments_30d,
        sum(failed_payments) over last_30_days as failed_payments_30d,
        sum(support_tickets) over last_30_days as support_tickets_30d
    from user_days
    window
        last_7_days as (partition by user_id order by day range between interval 6 days preceding and current row),
        last_14_days as (partition by user_id order by day range between interval 13 days preceding and current row),
        last_30_days as (partition by user_id order by day range between interval 29 days preceding and current row)
),

windows as (
    select * exclude (is_snapshot)
    from rolling
    where is_snapshot
),

payment_days as (
    select
        payments.user_id,
        payments.activity_date as payment_date
    from {{ ref('int_user_daily_activity') }} as payments, bounds
    where payments.payments > 0
        and payments.activity_date between bounds.first_day - 365 and bounds.last_day
),

with_last_payment as (
    select
        windows.*,
        payment_days.payment_date as last_payment_date
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
