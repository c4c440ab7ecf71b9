{#-
    A test of a daily model checks the days being built. When dbt runs with --event-time-start and
    --event-time-end (Dagster passes its partition window), a test of a model that declares an
    event_time sees only that window, so a night's tests cost a night's data, not the history.
    A test's own `where` still applies; without the flags every test sees the whole table.
-#}
{% macro duckdb__get_where_subquery(relation) -%}
    {%- set conditions = [] -%}
    {%- if config.get('where') -%}
        {%- do conditions.append(config.get('where')) -%}
    {%- endif -%}
    {%- set window = event_time_window() -%}
    {%- set tested = graph.nodes.get(model.attached_node) if model.attached_node else none -%}
    {%- set column = tested.config.event_time if tested else none -%}
    {%- if window and column -%}
        {%- do conditions.append(column ~ " >= cast('" ~ window.start ~ "' as timestamp) and " ~ column ~ " < cast('" ~ window.end ~ "' as timestamp)") -%}
    {%- endif -%}
    {%- if conditions -%}
        {{ return("(select * from " ~ relation ~ " where " ~ conditions | join(" and ") ~ ") dbt_subquery") }}
    {%- else -%}
        {{ return(relation) }}
    {%- endif -%}
{%- endmacro %}
