{#-
    A user churned after a snapshot when they had no active day in the 30 days that follow it.
    A snapshot is labelled only once those 30 days have been observed in full.
-#}

with activity as (
    select * from {{ ref('int_user_daily_activity') }}
),

observed as (
    select max(activity_date) as observed_through from activity
),

active_days as (
    select
        user_id,
        activity_date
    from activity
    where engagement_events > 0
),

labelled_snapshots as (
    select
        features.user_id,
        features.snapshot_date
    from {{ ref('fct_user_features') }} as features
    cross join observed
    where features.snapshot_date + 30 <= observed.observed_through
),

next_activity as (
    select
        labelled_snapshots.*,
        active_days.activity_date as next_active_date
    from labelled_snapshots
    asof left join active_days
        on labelled_snapshots.user_id = active_days.user_id
        and labelled_snapshots.snapshot_date < active_days.activity_date
)

select
    user_id,
    snapshot_date,
    next_active_date,
    coalesce(next_active_date > snapshot_date + 30, true) as churned
from next_activity
