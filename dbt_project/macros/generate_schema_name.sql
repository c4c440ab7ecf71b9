{#- Layers live in schemas named for them (staging, intermediate, marts), not <target>_<layer>. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ custom_schema_name | trim if custom_schema_name is not none else target.schema }}
{%- endmacro %}
