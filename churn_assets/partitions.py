"""The calendar every daily asset shares: raw events, daily aggregates, features, scores, drift."""

import dagster as dg

from churn_assets.settings import get_settings

daily_partitions = dg.DailyPartitionsDefinition(start_date=get_settings().start_date.isoformat())
