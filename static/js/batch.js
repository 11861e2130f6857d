// comicgen's page behaviour on top of htmx 2 and its ws extension.
//
// The batch page's fragments (progress header, panel tiles) arrive as out-of-band swaps from
// the WebSocket, or from the polling fallback while the socket is down. Events from different
// workers can arrive out of order, so each fragment carries the batch's event number in
// data-seq and an update older than what is on the page is dropped here.
(function () {
  "use strict";

  // Read by the polling trigger: `every 3s [!window.comicgenSocketOpen]`.
  window.comicgenSocketOpen = false;

  function setSocketState(state) {
    document.documentElement.dataset.socket = state;
  }

  document.addEventListener("htmx:wsOpen", function () {
    window.comicgenSocketOpen = true;
    setSocketState("open");
  });

  document.addEventListener("htmx:wsClose", function () {
    // The server sends a full snapshot on every (re)connection, so nothing needs resyncing
    // here; polling takes over until then.
    window.comicgenSocketOpen = false;
    setSocketState("closed");
  });

  document.addEventListener("htmx:wsConnecting", function () {
    if (!window.comicgenSocketOpen) setSocketState("connecting");
  });

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var target = event.detail.target;
    var fragment = event.detail.fragment;
    var incoming = fragment && fragment.nodeType === Node.DOCUMENT_FRAGMENT_NODE
      ? fragment.firstElementChild
      : fragment;
    if (!target || !incoming || !target.hasAttribute("data-seq") || !incoming.hasAttribute("data-seq")) {
      return;
    }
    var current = Number(target.getAttribute("data-seq"));
    var next = Number(incoming.getAttribute("data-seq"));
    var stale = next < current;
    // Same event number and same state: a snapshot repeating what is shown; skipping it keeps
    // images from flickering and only changed tiles are swapped.
    var unchanged = next === current &&
      target.getAttribute("data-state") === incoming.getAttribute("data-state");
    if (stale || unchanged) {
      event.detail.shouldSwap = false;
    }
  });

  // A confirmation for destructive forms (data-confirm="..."), without inline script.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form && form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  }, true);
})();
