"""A reference login page: a password (a stub: every user's is
``letmein``), then the second factor through sls with the Python client —
the user's devices, a challenge and its answer, a text message code, or a
push approved on the IB Key app with number matching.

    python3 examples/gateway/app.py --node 127.0.0.1:4434 --data-dir slsd-data

The daemon needs its TCP/TLS listener (``tcp-listen`` in ``[server]``);
``--data-dir`` holds ``ca.pem`` and the gateway certificate.
Everything sls says no to, or does not answer, fails closed.
"""

import argparse
import os
import secrets
import sys

from flask import Flask, jsonify, redirect, render_template_string, request, session, url_for

import sls

PASSWORD = "letmein"  # the stub: a real gateway checks its own directory

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title>
<style>
 body { font: 16px/1.5 system-ui, sans-serif; background: #eef1f5; margin: 0; }
 main { max-width: 26rem; margin: 4rem auto; background: #fff; padding: 2rem 2.25rem;
        border-radius: 10px; box-shadow: 0 2px 12px rgba(0,0,0,.08); }
 h1 { font-size: 1.35rem; margin: 0 0 1rem; }
 label { display: block; margin: .75rem 0 .25rem; font-weight: 600; }
 input[type=text], input[type=password] { width: 100%; box-sizing: border-box; padding: .55rem .7rem;
        font-size: 1.05rem; border: 1px solid #bbc; border-radius: 6px; }
 button { margin-top: 1rem; padding: .55rem 1.1rem; font-size: 1rem; border: 0; border-radius: 6px;
        background: #1f5fbf; color: #fff; cursor: pointer; }
 .device { display: flex; justify-content: space-between; align-items: center;
        border: 1px solid #dde; border-radius: 6px; padding: .5rem .75rem; margin: .5rem 0; }
 .device button { margin: 0; }
 .question { font-size: 2rem; letter-spacing: .25rem; font-weight: 700; text-align: center; margin: .5rem 0; }
 .note { color: #555; } .problem { color: #b00020; font-weight: 600; }
</style></head><body><main>
{% block body %}{% endblock %}
</main></body></html>"""


def page(body: str, **values) -> str:
    return render_template_string(PAGE.replace("{% block body %}{% endblock %}", body), **values)


LOGIN = """<h1>Sign in</h1>
{% if problem %}<p class="problem" id="problem">{{ problem }}</p>{% endif %}
<form method="post" action="/login">
 <label for="user">User name</label><input type="text" id="user" name="user" autofocus>
 <label for="password">Password</label><input type="password" id="password" name="password">
 <button id="sign-in">Sign in</button>
</form>"""

DEVICES = """<h1>Second factor for {{ user }}</h1>
{% if problem %}<p class="problem" id="problem">{{ problem }}</p>{% endif %}
{% for d in devices %}
 <div class="device"><span>{{ names[d.kind] }}{% if d.label %} “{{ d.label }}”{% endif %}</span>
 {% if d.kind == "ib-key" %}
  <form method="post" action="/push"><input type="hidden" name="device" value="{{ d.device }}">
   <button id="push-{{ d.device }}">Approve on my phone</button></form>
 {% elif d.kind == "sms" %}
  <form method="post" action="/sms"><button id="sms">Text me a code</button></form>
 {% else %}
  <form method="post" action="/challenge"><input type="hidden" name="device" value="{{ d.device }}">
   <button id="use-{{ d.device }}">Use</button></form>
 {% endif %}</div>
{% else %}<p class="problem">No device can answer for this login. Ask support.</p>
{% endfor %}"""

ANSWER = """<h1>{{ title }}</h1>
{% if problem %}<p class="problem" id="problem">{{ problem }}</p>{% endif %}
{% if question %}<p class="note">Enter this challenge into your card after your PIN:</p>
 <p class="question" id="question">{{ question }}</p>{% endif %}
{% if positions %}<p class="note" id="positions">Type the codes at positions
 <b>{{ positions[0] }}</b> and <b>{{ positions[1] }}</b> of your card, one after the other.</p>{% endif %}
{% if hint %}<p class="note">{{ hint }}</p>{% endif %}
<form method="post" action="{{ action }}">
 <label for="answer">Response</label><input type="text" id="answer" name="answer" inputmode="numeric" autocomplete="one-time-code" autofocus>
 <button id="verify">Verify</button>
</form>
<p><a href="/second-factor">Use another device</a></p>"""

PUSH = """<h1>Approve on your phone</h1>
<p class="note">We sent a request to your IB Key app. Choose this number there:</p>
<p class="question" id="match">{{ number }}</p>
<p class="note" id="status">Waiting for your phone…</p>
<script>
 fetch("/push/wait", {method: "POST"}).then(r => r.json()).then(result => {
   if (result.accepted) { location = "/welcome"; return; }
   document.getElementById("status").className = "problem";
   document.getElementById("status").textContent = result.message;
 });
</script>
<p><a href="/second-factor">Use another device</a></p>"""

WELCOME = """<h1 id="welcome">Welcome, {{ user }}</h1><p class="note">You are signed in with {{ how }}.</p>
<form method="post" action="/logout"><button>Sign out</button></form>"""

NAMES = {
    "dsc-plus": "Digital Security Card+",
    "scc": "Security code card",
    "online-scc": "Online security code card",
    "ib-key": "IB Key app",
    "sms": "Text message",
    "temporary": "Temporary code",
    "legacy-dsc": "Digital Security Card",
    "gold": "Gold security device",
    "platinum": "Platinum security device",
    "token": "Hardware token",
    "totp-app": "Authenticator app",
}

UNAVAILABLE = "The second factor cannot be checked right now. Try again in a minute."


def why(verdict) -> str:
    """What the user reads when a verdict is not a pass."""
    if isinstance(verdict, sls.Rejected):
        if verdict.attempts_left:
            return f"Wrong answer. {verdict.attempts_left} more tries on this challenge."
        return "Wrong answer. Start again with a new challenge."
    if isinstance(verdict, sls.LockedOut):
        if verdict.retry_after is None:
            return "This device is locked. Ask support to unlock it."
        return f"Too many wrong answers: this device is locked for {int(verdict.retry_after) + 1} s."
    if isinstance(verdict, sls.Expired):
        return "The challenge expired. Start again."
    if isinstance(verdict, sls.Denied):
        return "The login was refused on your phone."
    return "This login is no longer open. Start again."


def create_app(client: sls.Client) -> Flask:
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)

    def signed_in(how: str):
        session.pop("challenge", None)
        session.pop("push", None)
        session["authenticated"] = how
        return redirect(url_for("welcome"))

    @app.get("/")
    def home():
        return page(LOGIN, problem=request.args.get("problem"))

    @app.post("/login")
    def login():
        session.clear()
        user = request.form.get("user", "")
        if not user or request.form.get("password") != PASSWORD:
            return page(LOGIN, problem="Wrong user name or password.")
        session["user"] = user
        return redirect(url_for("second_factor"))

    @app.get("/second-factor")
    def second_factor(problem=None):
        user = session.get("user")
        if not user:
            return redirect(url_for("home"))
        try:
            devices = client.devices(user)
        except sls.SlsError:
            return page(LOGIN, problem=UNAVAILABLE)
        if not devices.required:
            return signed_in("your password alone (no second factor is required)")
        usable = [d for d in devices.devices if d.usable]
        return page(DEVICES, user=user, devices=usable, names=NAMES, problem=problem)

    @app.post("/challenge")
    def challenge():
        user = session.get("user")
        if not user:
            return redirect(url_for("home"))
        try:
            asked = client.challenge(user, int(request.form["device"]))
        except sls.RateLimited as error:
            return second_factor(f"Too many attempts; try again in {int(error.retry_after) + 1} s.")
        except (sls.SlsError, ValueError, KeyError):
            return second_factor(UNAVAILABLE)
        session["challenge"] = asked.challenge
        session["question"] = [asked.question, asked.positions]
        return answer_page()

    def answer_page(problem=None):
        question, positions = session.get("question", [None, None])
        hint = None if question or positions else "Type the code your device shows."
        return page(
            ANSWER, title="Answer the challenge", question=question, positions=positions,
            hint=hint, action="/verify", problem=problem,
        )

    @app.post("/verify")
    def verify():
        user, challenge_id = session.get("user"), session.get("challenge")
        if not user or not challenge_id:
            return redirect(url_for("home"))
        try:
            verdict = client.verify(challenge_id, request.form.get("answer", "").strip())
        except sls.SlsError:
            return answer_page(UNAVAILABLE)
        if verdict.accepted:
            return signed_in("your " + NAMES[verdict.kind])
        if isinstance(verdict, sls.Rejected) and verdict.attempts_left:
            return answer_page(why(verdict))
        session.pop("challenge", None)
        return second_factor(why(verdict))

    @app.post("/sms")
    def sms():
        user = session.get("user")
        if not user:
            return redirect(url_for("home"))
        try:
            client.send_code(user, "sms")
        except sls.RateLimited as error:
            return second_factor(f"A code was sent lately; a new one in {int(error.retry_after) + 1} s.")
        except sls.SlsError:
            return second_factor(UNAVAILABLE)
        return page(ANSWER, title="Enter the code we sent", hint="We sent a code to your phone.",
                    action="/verify-code", question=None, positions=None, problem=None)

    @app.post("/verify-code")
    def verify_code():
        user = session.get("user")
        if not user:
            return redirect(url_for("home"))
        try:
            verdict = client.verify_code(user, request.form.get("answer", "").strip())
        except sls.SlsError:
            return second_factor(UNAVAILABLE)
        if verdict.accepted:
            return signed_in("a code sent to your phone")
        return second_factor(why(verdict))

    @app.post("/push")
    def push():
        user = session.get("user")
        if not user:
            return redirect(url_for("home"))
        try:
            sent = client.push(user, int(request.form["device"]))
        except sls.PhoneUnreachable:
            return second_factor("Your phone is not connected. Use another device.")
        except sls.RateLimited as error:
            return second_factor(f"Too many requests; try again in {int(error.retry_after) + 1} s.")
        except (sls.SlsError, ValueError, KeyError):
            return second_factor(UNAVAILABLE)
        session["push"] = sent.push
        return page(PUSH, number=sent.match_number)

    @app.post("/push/wait")
    def push_wait():
        push_id = session.get("push")
        if not session.get("user") or not push_id:
            return jsonify(accepted=False, message="This login is no longer open. Start again.")
        try:
            verdict = client.await_push(push_id)
        except sls.SlsError:
            return jsonify(accepted=False, message=UNAVAILABLE)
        if verdict.accepted:
            signed_in("the IB Key app")
            return jsonify(accepted=True)
        session.pop("push", None)
        return jsonify(accepted=False, message=why(verdict))

    @app.get("/welcome")
    def welcome():
        if not session.get("authenticated"):
            return redirect(url_for("home"))
        return page(WELCOME, user=session["user"], how=session["authenticated"])

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("home"))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", action="append", required=True, help="sls's TCP/TLS address (repeat for several nodes)")
    parser.add_argument("--data-dir", default="slsd-data", help="holds ca.pem, gateway.pem and gateway.key")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    certs = {name: os.path.join(args.data_dir, file) for name, file in
             (("ca", "ca.pem"), ("cert", "gateway.pem"), ("key", "gateway.key"))}
    client = sls.Client(args.node, server_name=args.server_name, **certs)
    print(f"gateway: http://127.0.0.1:{args.port}/", flush=True)
    create_app(client).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    sys.exit(main())
