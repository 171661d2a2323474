// kiln's console: the live build log. Each line arrives once as a Server-Sent Event whose id
// is its line number; after a dropped connection the log asks again from the line after the
// last one shown, so no line is lost or repeated. Lines are text, never HTML.
(function () {
  "use strict";
  function follow(pre) {
    var url = pre.getAttribute("data-log-url");
    var next = parseInt(pre.getAttribute("data-from"), 10) || 0;
    var status = document.getElementById(pre.getAttribute("data-status"));
    var source = null;
    function atBottom() {
      return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    }
    function connect() {
      source = new EventSource(url + "&from=" + next);
      source.addEventListener("line", function (e) {
        var n = parseInt(e.lastEventId, 10);
        if (isNaN(n) || n < next) {
          return;
        }
        var stick = atBottom();
        var span = document.createElement("span");
        span.textContent = e.data;
        span.setAttribute("data-line", String(n));
        pre.appendChild(span);
        next = n + 1;
        pre.setAttribute("data-from", String(next));
        if (stick) {
          pre.scrollTop = pre.scrollHeight;
        }
      });
      source.addEventListener("end", function (e) {
        source.close();
        if (status) {
          status.textContent = "The build ended " + e.data + "; this is its whole log.";
        }
      });
      source.onerror = function () {
        source.close();
        if (status) {
          status.textContent = "The connection dropped; reconnecting from line " + (next + 1) + ".";
        }
        setTimeout(connect, 1000);
      };
      if (status) {
        status.textContent = "Following the log as it is written.";
      }
    }
    connect();
  }
  function start() {
    var logs = document.querySelectorAll("pre[data-log-url]");
    for (var i = 0; i < logs.length; i++) {
      follow(logs[i]);
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
