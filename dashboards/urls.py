from django.urls import path

from . import views

app_name = "dashboards"

urlpatterns = [
    path("", views.index, name="index"),
    path("<slug:org_slug>/", views.org_dashboard, name="org"),
]
