/* capi-gateway px.js — gives the page's Meta pixel PageView the event id the server uses,
   so Meta counts the view once. Loaded synchronously right after <head>, before the site's
   own pixel code, so it can see the pixel's call queue being created. */
(function (w, d) {
  "use strict";
  var me = d.currentScript;
  if (!me || w.__capiGateway) return;
  var cfg = {
    eventId: me.getAttribute("data-event-id") || "",
    pixels: (me.getAttribute("data-pixels") || "").split(",").filter(Boolean),
    token: me.getAttribute("data-token") || "",
    endpoint: me.getAttribute("data-endpoint") || ""
  };
  w.__capiGateway = cfg;

  // An fbq call's arguments with our event id added to a PageView that has none.
  function withEventId(args) {
    var a = Array.prototype.slice.call(args);
    var isPageView = (a[0] === "track" && a[1] === "PageView") ||
      (a[0] === "trackSingle" && a[2] === "PageView");
    if (!isPageView || !cfg.eventId) return a;
    var at = a[0] === "track" ? 3 : 4;
    var opts = a[at] || {};
    if (!opts.eventID) {
      var copy = {};
      for (var k in opts) if (Object.prototype.hasOwnProperty.call(opts, k)) copy[k] = opts[k];
      copy.eventID = cfg.eventId;
      while (a.length < at) a.push({});
      a[at] = copy;
    }
    return a;
  }

  // The pixel stub queues calls in fbq.queue until fbevents.js loads, then routes them
  // through fbq.callMethod. Rewriting both keeps the site's own fbq object untouched.
  function patchQueue(q) {
    if (!q || q.__capi) return q;
    for (var i = 0; i < q.length; i++) q[i] = withEventId(q[i]);
    var push = q.push;
    q.push = function () {
      var items = Array.prototype.map.call(arguments, withEventId);
      return push.apply(q, items);
    };
    q.__capi = true;
    return q;
  }

  function wrap(fn) {
    if (typeof fn !== "function" || fn.__capi) return fn;
    var wrapped = function () { return fn.apply(this, withEventId(arguments)); };
    wrapped.__capi = true;
    return wrapped;
  }

  function hook(stub) {
    if (!stub || stub.__capiHooked) return;
    stub.__capiHooked = true;
    var queue = patchQueue(stub.queue);
    var callMethod = wrap(stub.callMethod);
    try {
      Object.defineProperty(stub, "queue", {
        configurable: true,
        get: function () { return queue; },
        set: function (q) { queue = patchQueue(q); }
      });
      Object.defineProperty(stub, "callMethod", {
        configurable: true,
        get: function () { return callMethod; },
        set: function (f) { callMethod = wrap(f); }
      });
    } catch (e) { /* a frozen stub: leave it alone rather than break the page */ }
  }

  if (w.fbq) {
    hook(w.fbq);
  } else {
    // The base code runs `if (f.fbq) return; n = f.fbq = function () {...}`: catch that
    // assignment, hook the stub, then make fbq a plain property again.
    try {
      Object.defineProperty(w, "fbq", {
        configurable: true,
        enumerable: true,
        get: function () { return undefined; },
        set: function (stub) {
          Object.defineProperty(w, "fbq", {
            configurable: true, enumerable: true, writable: true, value: stub
          });
          hook(stub);
        }
      });
    } catch (e) { /* fbq not configurable: nothing to hook */ }
  }
})(window, document);
