// capi-gateway dashboard: confirmations, local times, legend highlighting. No build step.
(function () {
  "use strict";

  // Discarding loses the event for good: ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });

  // One click, one request: a double click must not post twice.
  document.querySelectorAll("form[method=post]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (event.defaultPrevented) {
        return;
      }
      form.querySelectorAll("button").forEach(function (button) {
        button.disabled = true;
      });
    });
  });

  // The server writes UTC; show the reader's own clock, keeping UTC in the tooltip.
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      el.title = el.textContent;
      el.textContent = when.toLocaleString();
    }
  });

  // Hovering (or focusing) a legend entry brings its series forward in the chart.
  var chart = document.querySelector("svg.chart");
  document.querySelectorAll(".legend [data-series]").forEach(function (item) {
    var on = function () {
      if (chart) {
        chart.setAttribute("data-focus", item.getAttribute("data-series"));
      }
    };
    var off = function () {
      if (chart) {
        chart.removeAttribute("data-focus");
      }
    };
    item.tabIndex = 0;
    item.addEventListener("mouseenter", on);
    item.addEventListener("focus", on);
    item.addEventListener("mouseleave", off);
    item.addEventListener("blur", off);
  });
})();
