from django.urls import path, re_path

from . import views

app_name = "serving"

urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("embeddings", views.embeddings, name="embeddings"),
    path("models", views.models, name="models"),
    path("models/<path:model_id>", views.models, name="model"),
    re_path(r"^(?P<path>.*)$", views.not_found),
]
