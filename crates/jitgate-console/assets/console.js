// jitgate console: progressive enhancement only. Every action is a plain form that works
// without this script; it adds live countdowns, live updates of the parts marked data-live,
// copy buttons, filtering the access levels by resource, and the recording player.
(function () {
  'use strict';

  function fmt(secs) {
    if (secs <= 0) return 'expired';
    var d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60), s = secs % 60;
    if (d) return d + 'd ' + h + 'h left';
    if (h) return h + 'h ' + m + 'm left';
    if (m) return m + 'm ' + s + 's left';
    return s + 's left';
  }

  var refreshing = false;
  function tick() {
    var now = Math.floor(Date.now() / 1000), due = false;
    document.querySelectorAll('[data-expires]').forEach(function (el) {
      var left = Number(el.getAttribute('data-expires')) - now;
      el.textContent = fmt(left);
      el.classList.toggle('soon', left > 0 && left <= 300);
      el.classList.toggle('over', left <= 0);
      if (left <= 0 && left > -5) due = true;
    });
    if (due && !refreshing) refresh();
  }

  // Replace each [data-live] part with the server's current version, unless the user is
  // typing in it.
  function refresh() {
    refreshing = true;
    return fetch(location.href, { credentials: 'same-origin', headers: { 'X-Jitgate-Live': '1' } })
      .then(function (r) {
        if (r.redirected || !r.ok) { if (r.redirected) location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, 'text/html');
        document.querySelectorAll('[data-live][id]').forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (!fresh) return;
          if (el.contains(document.activeElement) && document.activeElement.tagName === 'INPUT' && document.activeElement.value) return;
          el.replaceWith(document.importNode(fresh, true));
        });
        var badge = doc.getElementById('inbox-count'), mine = document.getElementById('inbox-count');
        if (badge && mine) mine.replaceWith(document.importNode(badge, true));
        else if (mine && !badge) mine.remove();
        else if (badge && !mine) { var a = document.querySelector('nav a[href="/ui/approvals"]'); if (a) a.appendChild(document.importNode(badge, true)); }
        tick();
      })
      .catch(function () {})
      .then(function () { refreshing = false; });
  }

  function poll(v) {
    var url = '/ui/poll' + (v === undefined ? '' : '?v=' + v);
    fetch(url, { credentials: 'same-origin' })
      .then(function (r) { if (!r.ok || r.redirected) throw new Error('poll'); return r.json(); })
      .then(function (j) {
        if (v !== undefined && j.v !== v) refresh();
        poll(j.v);
      })
      .catch(function () { setTimeout(function () { poll(v); }, 5000); });
  }

  document.addEventListener('click', function (ev) {
    var b = ev.target.closest && ev.target.closest('[data-copy]');
    if (!b) return;
    var el = document.getElementById(b.getAttribute('data-copy'));
    if (!el) return;
    var text = el.textContent;
    var done = function () { b.textContent = 'Copied'; setTimeout(function () { b.textContent = 'Copy'; }, 1500); };
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(text).then(done, function () {});
  });

  function accessByResource() {
    var res = document.getElementById('resource'), acc = document.getElementById('access');
    if (!res || !acc) return;
    var update = function () {
      var opt = res.options[res.selectedIndex];
      var allowed = (opt && opt.getAttribute('data-access') || '').split(' ');
      Array.prototype.forEach.call(acc.options, function (o) { o.hidden = o.value !== '' && allowed.indexOf(o.value) < 0; });
      if (acc.selectedOptions[0] && acc.selectedOptions[0].hidden) acc.value = '';
    };
    res.addEventListener('change', update);
    update();
  }

  function player() {
    if (!window.AsciinemaPlayer) return;
    document.querySelectorAll('.player[data-cast]').forEach(function (el) {
      window.AsciinemaPlayer.create(el.getAttribute('data-cast'), el, { fit: 'width', idleTimeLimit: 2, controls: true });
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    tick();
    setInterval(tick, 1000);
    accessByResource();
    player();
    if (document.body.getAttribute('data-live')) poll();
  });
})();
