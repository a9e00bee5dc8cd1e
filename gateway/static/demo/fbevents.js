/* capi-gateway demo: a local stand-in for Meta's fbevents.js. Nothing leaves the machine.
 *
 * It does what the real library does with the base code's stub -- takes window.fbq, sets
 * fbq.callMethod and replays fbq.queue through it -- and, instead of calling Meta, keeps
 * every call in window.__fbqCalls and says it in the console. The gateway's px.js has
 * already given each tracking call its eventID and mirrored it to /_capi/collect, so the
 * dashboard shows browser and server events pairing up.
 */
(function (w) {
  "use strict";
  var fbq = w.fbq;
  if (!fbq || fbq.__standIn) return;
  fbq.__standIn = true;
  var calls = w.__fbqCalls = w.__fbqCalls || [];
  fbq.callMethod = function () {
    var args = Array.prototype.slice.call(arguments);
    calls.push(args);
    if (w.console && args[0] !== "init") {
      var options = args[args.length - 1] || {};
      w.console.info("[demo pixel] " + args.slice(0, 2).join(" ") +
        (options.eventID ? " eventID=" + options.eventID : ""));
    }
  };
  var queue = fbq.queue || [];
  for (var i = 0; i < queue.length; i++) fbq.callMethod.apply(fbq, queue[i]);
  fbq.queue = [];
})(window);
