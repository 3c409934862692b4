# Minimal Django settings for the Channels tutorial chat app, used as a
# benchmark peer (the channel layer is channels_redis on the local Redis).
import os

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "chat",
]
MIDDLEWARE = []
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # As in the tutorial, except that redis-py's default pool of 100
        # connections is raised: with it, a few hundred clients joining at once
        # fail with "Too many connections".
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ.get("CHAT_REDIS_URL", "redis://127.0.0.1:6379/0"),
                    "max_connections": 2000,
                }
            ]
        },
    },
}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
