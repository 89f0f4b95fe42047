from django.urls import path

from . import api

app_name = "usage"

urlpatterns = [
    path("", api.UsageSummaryView.as_view(), name="summary"),
    path("events/", api.UsageEventsView.as_view(), name="events"),
]
