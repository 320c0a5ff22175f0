import asyncio
import os
import socket
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Note

MESSAGE_FILE = Path(__file__).resolve().parent / "message.txt"


def current_release():
    return (
        getattr(settings, "FABDEPLOY_RELEASE", None)
        or os.environ.get("FABDEPLOY_RELEASE")
        or "dev"
    )


def index(request):
    context = {
        "message": MESSAGE_FILE.read_text(encoding="utf-8").strip(),
        "release": current_release(),
        "note_count": Note.objects.count(),
    }
    return render(request, "pages/index.html", context)


def served_by():
    """The socket uWSGI serves this app on (host:port behind a load balancer); "" outside uWSGI."""
    try:
        import uwsgi
    except ImportError:
        return ""
    sock = uwsgi.opt.get("socket", b"")
    sock = sock[0] if isinstance(sock, list) else sock
    return sock.decode() if isinstance(sock, bytes) else str(sock)


def whoami(request):
    return JsonResponse(
        {
            "release": current_release(),
            "socket": served_by(),
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "base_dir": str(settings.BASE_DIR),
            "secure": request.is_secure(),
        }
    )


class BoomError(RuntimeError):
    pass


def boom(request):
    """A view that raises: its traceback must reach the app log (fab logs)."""
    raise BoomError("fabdeploy-sample-boom: this view always fails")


async def async_view(request):
    """An async view: under an ASGI server it runs on the event loop (no thread of its own)."""
    await asyncio.sleep(0)
    return JsonResponse({"release": current_release(), "async": True, "cwd": os.getcwd(), "pid": os.getpid(),
                         "server": request.META.get("SERVER_SOFTWARE", "") or "asgi"})


_SEEN_FIRST: list[int] = []  # the pid that first ran seen() in this memory (a forked worker inherits its master's)


def seen(request):
    """Append "<pid> <User-Agent> <css> <first>" to MEDIA_ROOT/seen.log: which process answered whom, in order,
    the first line of the collected pages/site.css at that moment ("-": none), and the process that first ran
    this view in this process's memory (a worker forked from a master that answered the warm-up GET: the
    master's pid) (the tests of warm workers)."""
    if not _SEEN_FIRST:
        _SEEN_FIRST.append(os.getpid())
    try:
        css = (Path(settings.STATIC_ROOT) / "pages" / "site.css").read_text().splitlines()[0].strip() or "-"
    except (OSError, IndexError, TypeError):
        css = "-"
    agent = request.META.get("HTTP_USER_AGENT", "-").replace(" ", "_")
    line = f"{os.getpid()} {agent} {css.replace(' ', '_')} {_SEEN_FIRST[0]}\n"
    with open(Path(settings.MEDIA_ROOT) / "seen.log", "a", encoding="utf-8") as f:
        f.write(line)
    return HttpResponse("seen", content_type="text/plain")


def health(request):
    return HttpResponse("ok", content_type="text/plain")


@csrf_exempt
@require_POST
def upload(request):
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return HttpResponseBadRequest("missing file field 'file'", content_type="text/plain")
    name = default_storage.save(f"uploads/{uploaded.name}", uploaded)
    return HttpResponse(name, content_type="text/plain")


@csrf_exempt
@require_POST
def add_note(request):
    Note.objects.create(text=request.POST.get("text", "")[:200])
    return HttpResponse(str(Note.objects.count()), content_type="text/plain")
