/* capi-gateway px.js: every Meta pixel event of this page also reaches the Conversions API
   through the site's own origin, under the same event id, so Meta counts it once.
   Loaded synchronously right after <head> (before the site's own pixel code), configured by
   its own tag's data attributes: no inline script, so a CSP with 'self' is enough. */
(function (w, d) {
  "use strict";
  var me = d.currentScript;
  if (!me || w.capi) return;
  function attr(name) { return me.getAttribute("data-" + name) || ""; }
  var cfg = {
    eventId: attr("event-id"),
    pixels: attr("pixels").split(",").filter(Boolean),
    token: attr("token"),
    endpoint: attr("endpoint"),
    mode: attr("mode") || "hook",
    fbevents: attr("fbevents"),
    consent: attr("consent"),
    ldu: attr("ldu") === "1",
    triggers: attr("triggers")
  };
  var STANDARD = ("AddPaymentInfo AddToCart AddToWishlist CompleteRegistration Contact " +
    "CustomizeProduct Donate FindLocation InitiateCheckout Lead PageView Purchase Schedule " +
    "Search StartTrial SubmitApplication Subscribe ViewContent").split(" ");
  var NAME = /^[A-Za-z0-9_ -]{1,50}$/;
  // The document's PageView is the one the server stored under the page's event id; a
  // PageView on another route (a single-page app's path or "#/" hash) is another view. The
  // query is left out: sites strip fbclid or utm_* from it with replaceState on load.
  function route() {
    var h = w.location.hash;
    return w.location.pathname + (/^#!?\//.test(h) ? h : "");
  }
  var pageRoute = route();
  var seq = 0;
  var mirrored = {};
  var outbox = [];
  var flushing = false;

  function newId() { seq += 1; return cfg.eventId + "." + seq; }
  function idFor(name) {
    return name === "PageView" && route() === pageRoute ? cfg.eventId : newId();
  }

  // The same rule as the server's `consent` setting: "cookie=v1|v2", or empty for none.
  function consented() {
    if (!cfg.consent) return true;
    var parts = cfg.consent.split("=");
    var accepted = (parts[1] || "").split("|");
    var pairs = d.cookie ? d.cookie.split(";") : [];
    for (var i = 0; i < pairs.length; i++) {
      var kv = pairs[i].replace(/^\s+/, "").split("=");
      if (kv[0] === parts[0]) return accepted.indexOf(decodeURIComponent(kv.slice(1).join("="))) >= 0;
    }
    return false;
  }

  function post(body) {
    try {
      if (navigator.sendBeacon && navigator.sendBeacon(cfg.endpoint, body)) return;
    } catch (e) { /* fall through to fetch */ }
    try {
      w.fetch(cfg.endpoint, {
        method: "POST", body: body, keepalive: true, credentials: "same-origin",
        headers: { "Content-Type": "text/plain" }
      });
    } catch (e) { /* nothing else to try */ }
  }

  function flush() {
    flushing = false;
    while (outbox.length) {
      post(JSON.stringify({
        token: cfg.token, url: w.location.href, referrer: d.referrer, title: d.title,
        events: outbox.splice(0, 20)
      }));
    }
  }

  // Events of one task go out together at its end: after a click handler, before the
  // navigation it starts (sendBeacon outlives the page).
  function queue(name, customData, eventId, pixelId, rule) {
    if (!cfg.endpoint || !consented()) return;
    // What /collect would refuse is not sent: one refused event loses its whole beacon.
    // Only the page's own PageView may be mirrored (the server holds it already).
    if (STANDARD.indexOf(name) < 0 && !NAME.test(name)) return;
    if (name === "PageView" && eventId !== cfg.eventId) return;
    var key = name + "\u0000" + eventId;
    if (mirrored[key]) return;
    mirrored[key] = true;
    var ev = { event_name: name, event_id: eventId, event_time: Math.floor(Date.now() / 1000) };
    if (customData && typeof customData === "object") ev.custom_data = customData;
    if (pixelId) ev.pixel_id = String(pixelId);
    if (rule) { ev.rule = rule.name; ev.data = rule.data; ev.fields = rule.fields; }
    outbox.push(ev);
    if (!flushing) { flushing = true; Promise.resolve().then(flush); }
  }
  w.addEventListener("pagehide", flush);

  // An fbq call's arguments with an eventID added where missing; tracking calls mirrored.
  function handle(args) {
    var a = Array.prototype.slice.call(args);
    var single = a[0] === "trackSingle" || a[0] === "trackSingleCustom";
    if (a[0] !== "track" && a[0] !== "trackCustom" && !single) return a;
    var at = single ? 4 : 3;
    var name = single ? a[2] : a[1];
    if (typeof name !== "string") return a;
    var opts = a[at] && typeof a[at] === "object" ? a[at] : {};
    var id = opts.eventID;
    if (!id) {
      id = idFor(name);
      var copy = {};
      for (var k in opts) if (Object.prototype.hasOwnProperty.call(opts, k)) copy[k] = opts[k];
      copy.eventID = id;
      while (a.length < at) a.push({});
      a[at] = copy;
    }
    queue(name, single ? a[3] : a[2], String(id), single ? a[1] : null);
    return a;
  }

  // The pixel stub queues calls in fbq.queue until fbevents.js loads, then routes them
  // through fbq.callMethod. Rewriting both keeps the site's own fbq object in place.
  function patchQueue(q) {
    if (!q || q.__capi) return q;
    for (var i = 0; i < q.length; i++) q[i] = handle(q[i]);
    var push = q.push;
    q.push = function () {
      return push.apply(q, Array.prototype.map.call(arguments, handle));
    };
    q.__capi = true;
    return q;
  }

  function wrap(fn) {
    if (typeof fn !== "function" || fn.__capi) return fn;
    var wrapped = function () { return fn.apply(this, handle(arguments)); };
    wrapped.__capi = true;
    return wrapped;
  }

  function hook(stub) {
    if (!stub || stub.__capiHooked) return;
    stub.__capiHooked = true;
    var q = patchQueue(stub.queue);
    var callMethod = wrap(stub.callMethod);
    try {
      Object.defineProperty(stub, "queue", {
        configurable: true,
        get: function () { return q; },
        set: function (value) { q = patchQueue(value); }
      });
      Object.defineProperty(stub, "callMethod", {
        configurable: true,
        get: function () { return callMethod; },
        set: function (f) { callMethod = wrap(f); }
      });
    } catch (e) { /* a frozen stub: leave it alone rather than break the page */ }
  }

  function watchForPixel() {
    if (w.fbq) { hook(w.fbq); return; }
    // Meta's base code runs `if (f.fbq) return; n = f.fbq = function () {...}`: catch that
    // assignment, hook the stub, then make fbq a plain property again.
    try {
      Object.defineProperty(w, "fbq", {
        configurable: true, enumerable: true,
        get: function () { return undefined; },
        set: function (stub) {
          Object.defineProperty(w, "fbq", {
            configurable: true, enumerable: true, writable: true, value: stub
          });
          hook(stub);
        }
      });
    } catch (e) { /* fbq is not configurable: nothing to hook */ }
  }

  // `load` mode: Meta's own base code, run by us, for a site that has no pixel.
  function loadPixel() {
    if (w.fbq) return;
    var n = w.fbq = function () {
      n.callMethod ? n.callMethod.apply(n, arguments) : n.queue.push(arguments);
    };
    if (!w._fbq) w._fbq = n;
    n.push = n; n.loaded = true; n.version = "2.0"; n.queue = [];
    hook(n);
    var s = d.createElement("script");
    s.async = true;
    s.src = cfg.fbevents;
    var first = d.getElementsByTagName("script")[0];
    (first && first.parentNode ? first.parentNode : d.head).insertBefore(s, first || null);
    if (cfg.ldu) w.fbq("dataProcessingOptions", ["LDU"], 0, 0);
    for (var i = 0; i < cfg.pixels.length; i++) w.fbq("init", cfg.pixels[i]);
    w.fbq("track", "PageView");
  }

  // We load Meta's pixel only with the visitor's consent (as the server sets no cookie
  // without it); consent given later on the page loads it at the next capi.track().
  var loadMode = cfg.mode === "load" && !!cfg.fbevents;
  if (loadMode) { if (consented()) loadPixel(); }
  else if (cfg.mode !== "off") watchForPixel();

  // Click and submit rules from the site's rule files. The beacon carries the raw data-*
  // values and form fields the rule names (the server converts and hashes them); the
  // browser pixel gets only the custom_data recipes, never customer fields.
  function number(text, decimal) {
    var s = String(text).replace(/\u2212/g, "-").replace(/[^0-9,.\-]/g, "");
    if (!s) return null;
    if (decimal === "auto") {
      var dot = s.lastIndexOf("."), comma = s.lastIndexOf(",");
      if (dot >= 0 && comma >= 0) decimal = dot > comma ? "." : ",";
      else if (comma >= 0) {
        var head = s.replace("-", "").split(",")[0], tail = s.slice(comma + 1);
        // As the server reads it: "1,234" groups thousands, "12,50" and "0,500" are decimals.
        decimal = (s.split(",").length > 2 ||
          (tail.length === 3 && head.length <= 3 && head.charAt(0) !== "0")) ? "." : ",";
      } else decimal = s.split(".").length > 2 ? "," : ".";
    }
    var n = parseFloat(s.split(decimal === "." ? "," : ".").join("").replace(decimal, "."));
    return isFinite(n) ? n : null;
  }
  function fieldValues(form, name) {
    var out = [];
    if (!form || !form.elements) return out;
    var els = form.elements;
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      if (el.name !== name || el.disabled || el.type === "file" || el.type === "password") continue;
      if ((el.type === "checkbox" || el.type === "radio") && !el.checked) continue;
      if (el.tagName === "SELECT" && el.multiple) {
        for (var j = 0; j < el.options.length; j++) if (el.options[j].selected) out.push(el.options[j].value);
      } else out.push(el.value);
    }
    return out;
  }
  function fire(t, el) {
    var data = {}, fields = {}, i;
    for (i = 0; i < t.d.length; i++) {
      var holder = el.closest("[data-" + t.d[i] + "]");
      if (holder) data[t.d[i]] = holder.getAttribute("data-" + t.d[i]);
    }
    var form = el.tagName === "FORM" ? el : (el.form || el.closest("form"));
    for (i = 0; i < t.f.length; i++) {
      var values = fieldValues(form, t.f[i]);
      if (values.length) fields[t.f[i]] = values;
    }
    var query = new URLSearchParams(w.location.search);
    var custom = {};
    for (var target in t.c) {
      var recipes = t.c[target];
      for (i = 0; i < recipes.length; i++) {
        var r = recipes[i], raw = null;
        if (r[0] === "const") raw = r[1];
        else if (r[0] === "data") raw = data[r[1]];
        else if (r[0] === "field") raw = fields[r[1]] ? fields[r[1]][0] : null;
        else if (r[0] === "query") raw = query.get(r[1]);
        if (raw === null || raw === undefined || raw === "") continue;
        if (r[2] === "number" || r[2] === "integer") {
          raw = typeof raw === "number" ? raw : number(raw, r[4]);
          if (raw === null) continue;
          raw = raw / r[3];
          if (r[2] === "integer") raw = Math.round(raw);
        } else if (r[2] === "list" && !Array.isArray(raw)) raw = [String(raw)];
        custom[target] = raw;
        break;
      }
    }
    var id = newId();
    if (!consented()) return;
    var fbq = cfg.mode !== "off" ? w.fbq : null;
    if (typeof fbq === "function") {
      // The hook would mirror this call without the rule's fields: mark it mirrored so
      // the rule's own beacon below is the one that goes out.
      var key = t.e + "\u0000" + id;
      mirrored[key] = true;
      fbq(STANDARD.indexOf(t.e) >= 0 ? "track" : "trackCustom", t.e, custom, { eventID: id });
      delete mirrored[key];
    }
    queue(t.e, custom, id, null, { name: t.r, data: data, fields: fields });
  }
  function listen(triggers) {
    var kinds = { click: [], submit: [] };
    for (var i = 0; i < triggers.length; i++) if (kinds[triggers[i].t]) kinds[triggers[i].t].push(triggers[i]);
    function on(kind) {
      if (!kinds[kind].length) return;
      d.addEventListener(kind, function (e) {
        var target = e.target;
        if (!target || !target.closest) return;
        for (var j = 0; j < kinds[kind].length; j++) {
          var t = kinds[kind][j];
          var el = target.closest(t.s);
          if (el) { try { fire(t, el); } catch (err) { /* never break the site's click */ } }
        }
      }, true);
    }
    on("click"); on("submit");
  }
  if (cfg.triggers) { try { listen(JSON.parse(cfg.triggers)); } catch (e) { /* bad JSON: no triggers */ } }

  // For sites that send an event without the Meta pixel (or want the id back).
  w.capi = {
    eventId: cfg.eventId,
    track: function (name, customData, options) {
      var id = String((options && options.eventID) || idFor(name));
      if (loadMode && !w.fbq && consented()) loadPixel();
      var fbq = cfg.mode !== "off" ? w.fbq : null;
      if (typeof fbq === "function") {
        var kind = STANDARD.indexOf(name) >= 0 ? "track" : "trackCustom";
        fbq(kind, name, customData || {}, { eventID: id });
      }
      queue(name, customData, id, options && options.pixelId);
      return id;
    }
  };
})(window, document);
