from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("whoami", views.whoami, name="whoami"),
    path("health", views.health, name="health"),
    path("seen", views.seen, name="seen"),
    path("async/", views.async_view, name="async"),
    path("boom/", views.boom, name="boom"),
    path("upload", views.upload, name="upload"),
    path("notes/add", views.add_note, name="add_note"),
]
