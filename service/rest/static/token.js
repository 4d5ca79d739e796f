/* rankboard: the read token, asked once per tab and sent as a header, never in a URL.
 *
 * rankboardToken.get() / .set(t) / .clear(): the token in sessionStorage (this tab only).
 * rankboardFetch(url): fetch with "Authorization: Bearer <token>" when one is known; on
 *   401 it shows the token form, stores what is typed and retries.
 * rankboardSpec(): the OpenAPI document, through rankboardFetch (for /docs and /redoc).
 */
"use strict";

var rankboardToken = (function () {
  var KEY = "rankboard.readToken";
  return {
    get: function () {
      try { return window.sessionStorage.getItem(KEY); } catch (e) { return null; }
    },
    set: function (t) {
      try { window.sessionStorage.setItem(KEY, t); } catch (e) { /* private mode */ }
    },
    clear: function () {
      try { window.sessionStorage.removeItem(KEY); } catch (e) { /* private mode */ }
    },
  };
})();

var rankboardAskToken = (function () {
  var pending = null;
  return function (message) {
    if (pending) { return pending; }
    pending = new Promise(function (resolve) {
      var box = document.createElement("div");
      box.id = "token-dialog";
      box.className = "token-dialog";
      box.setAttribute("role", "dialog");
      box.innerHTML =
        '<form id="token-form" class="token-form" autocomplete="off">' +
        '<h2>Read token</h2>' +
        '<p class="token-message"></p>' +
        '<input id="token-input" type="password" aria-label="read token" autofocus>' +
        '<button id="token-submit" type="submit">Open</button>' +
        '</form>';
      box.querySelector(".token-message").textContent =
        message || "This rankboard service needs its read token (rankboard serve --read-token).";
      document.body.appendChild(box);
      var input = box.querySelector("#token-input");
      input.focus();
      box.querySelector("#token-form").addEventListener("submit", function (ev) {
        ev.preventDefault();
        var t = input.value.trim();
        if (!t) { return; }
        rankboardToken.set(t);
        box.remove();
        pending = null;
        resolve(t);
      });
    });
    return pending;
  };
})();

// Whether the service wants a token: asked before the first data request, so that a
// normal page load makes no request that is refused (public, holds no data).
var rankboardReady = (function () {
  var ready = null;
  return function () {
    if (!ready) {
      ready = fetch("/dashboard/config.json", { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : { token_required: false }; })
        .catch(function () { return { token_required: false }; })
        .then(function (cfg) {
          if (cfg.token_required && !rankboardToken.get()) { return rankboardAskToken(null); }
          return null;
        });
    }
    return ready;
  };
})();

async function rankboardFetch(url, options) {
  await rankboardReady();
  for (var attempt = 0; ; attempt++) {
    var headers = {};
    var t = rankboardToken.get();
    if (t) { headers.Authorization = "Bearer " + t; }
    var resp;
    try {
      resp = await fetch(url, Object.assign({ headers: headers, cache: "no-store" }, options || {}));
    } catch (err) {
      if (!(t && err instanceof TypeError && /header/i.test(String(err)))) { throw err; }
      resp = null;  // a token no HTTP header can carry (non-Latin-1 characters)
    }
    if (resp && resp.status !== 401) { return resp; }
    if (t) { rankboardToken.clear(); }
    await rankboardAskToken(t ? "That token was refused; type the read token again." : null);
  }
}

async function rankboardSpec() {
  var resp = await rankboardFetch("/openapi.json");
  if (!resp.ok) { throw new Error("/openapi.json: HTTP " + resp.status); }
  return resp.json();
}
