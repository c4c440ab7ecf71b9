{#-
    The days a run builds. Dagster passes its partition window as --event-time-start and
    --event-time-end, the flags of dbt's event-time features; the daily models read them here and
    build the whole window in one statement, which replaces exactly those days. Without the flags
    a daily model builds, and replaces, the whole history.

    Returns {'start': 'YYYY-MM-DD', 'end': 'YYYY-MM-DD'} (end exclusive), or none.
-#}
{% macro event_time_window() -%}
    {%- set start = invocation_args_dict.get('event_time_start') -%}
    {%- set end = invocation_args_dict.get('event_time_end') -%}
    {%- if start and end -%}
        {{ return({'start': (start | string)[:10], 'end': (end | string)[:10]}) }}
    {%- endif -%}
    {{ return(none) }}
{%- endmacro %}


{#- `incremental_strategy='event_time_window'`: delete the window's rows, insert the new ones. -#}
{% macro get_incremental_event_time_window_sql(arg_dict) -%}
    {%- set event_time = config.require('event_time') -%}
    {%- set window = event_time_window() -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    {%- set in_window -%}
        {%- if window -%}
            where {{ event_time }} >= cast('{{ window.start }}' as date) and {{ event_time }} < cast('{{ window.end }}' as date)
        {%- endif -%}
    {%- endset -%}
    delete from {{ arg_dict['target_relation'] }} {{ in_window }};
    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }} from {{ arg_dict['temp_relation'] }} {{ in_window }};
{%- endmacro %}
