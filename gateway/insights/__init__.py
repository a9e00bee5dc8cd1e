"""Insights for marketers: reports (summary, funnel, attribution) computed from the store's
facts and touchpoints, served to the CLI, the JSON API and the dashboard."""
