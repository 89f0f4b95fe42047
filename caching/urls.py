from django.urls import path

from . import api

app_name = "cache"

urlpatterns = [
    path("purge/", api.CachePurgeView.as_view(), name="purge"),
]
