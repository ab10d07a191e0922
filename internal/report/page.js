// statexec report: draws the panels of #report-data with uPlot and records
// what it drew in #report-state (read by the project's browser test).
(function () {
  "use strict";
  var state = { errors: [], panels: [], requests: 0, ready: false };
  var stateEl = document.getElementById("report-state");
  function publish() {
    if (window.performance && performance.getEntriesByType) {
      state.requests = performance.getEntriesByType("resource").length;
    }
    stateEl.textContent = JSON.stringify(state);
  }
  window.addEventListener("error", function (e) {
    state.errors.push(String(e.message || e));
    publish();
  });
  // Console errors count as errors too (uPlot reports bad options there).
  var consoleError = console.error;
  console.error = function () {
    state.errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    publish();
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("unhandledrejection", function (e) {
    state.errors.push("unhandled rejection: " + String(e.reason));
    publish();
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    state.errors.push("blocked by the page's policy: " + e.violatedDirective + " " + e.blockedURI);
    publish();
  });

  var data = JSON.parse(document.getElementById("report-data").textContent);
  var multi = data.runs.length > 1;
  var palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var dashes = [[], [6, 3], [2, 2], [10, 3, 2, 3], [1, 4]];

  function hexRGB(c) {
    var m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(String(c));
    return m ? [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)] : [-999, -999, -999];
  }

  function colour(s, i) {
    return palette[(multi ? s.run : i) % palette.length];
  }

  // fmt prints v in the panel's unit with an SI (or binary, for bytes)
  // prefix.
  function fmt(v, unit) {
    if (v == null || isNaN(v)) return "—";
    var a = Math.abs(v);
    if (unit === "bytes" || unit === "bytes/s") {
      var units = ["B", "KiB", "MiB", "GiB", "TiB"], k = 0;
      while (a >= 1024 && k < units.length - 1) { a /= 1024; v /= 1024; k++; }
      return v.toFixed(a >= 100 || k === 0 ? 0 : 2) + " " + units[k] + (unit === "bytes/s" ? "/s" : "");
    }
    if (unit === "s") {
      if (a === 0 || a >= 1) return v.toFixed(3) + " s";
      if (a >= 1e-3) return (v * 1e3).toPrecision(3) + " ms";
      return (v * 1e6).toPrecision(3) + " µs";
    }
    var s = a >= 1e6 ? v.toExponential(2) : a >= 100 ? v.toFixed(0) : v.toPrecision(3);
    return unit ? s + " " + unit : s;
  }

  // Phases shaded under the grid: waiting before and after the command.
  // Returns how many bands it drew.
  function shadePhases(u) {
    var ctx = u.ctx, top = u.bbox.top, h = u.bbox.height, bands = 0;
    data.runs.forEach(function (r, i) {
      var c = multi ? palette[i % palette.length] : "#808080";
      ctx.save();
      ctx.globalAlpha = multi ? 0.07 : 0.13;
      ctx.fillStyle = c;
      function band(a, b) {
        if (a == null || b == null || b <= a) return;
        var x0 = u.valToPos(a, "x", true), x1 = u.valToPos(b, "x", true);
        var l = Math.max(x0, u.bbox.left), rgt = Math.min(x1, u.bbox.left + u.bbox.width);
        if (rgt > l) {
          ctx.fillRect(l, top, rgt - l, h);
          bands++;
        }
      }
      band(r.first, r.start != null ? r.start : r.last);
      if (r.end != null) band(r.end, r.last);
      ctx.restore();
    });
    return bands;
  }

  var charts = [];
  var syncing = false;
  // Zooming one chart zooms them all.
  function syncZoom(u, key) {
    if (key !== "x" || syncing) return;
    syncing = true;
    var min = u.scales.x.min, max = u.scales.x.max;
    charts.forEach(function (c) {
      if (c !== u) c.setScale("x", { min: min, max: max });
    });
    syncing = false;
  }

  function chartWidth(el) {
    return Math.max(400, el.clientWidth || 1000);
  }

  function drawPanel(p) {
    var section = document.getElementById(p.section);
    var div = document.createElement("div");
    div.className = "panel";
    div.id = "panel-" + p.id;
    var h = document.createElement("h3");
    h.textContent = p.title;
    div.appendChild(h);
    if (p.help) {
      var help = document.createElement("p");
      help.className = "help";
      help.textContent = p.help;
      div.appendChild(help);
    }
    var dec = p.series.filter(function (s) { return s.decimated; });
    if (dec.length) {
      var note = document.createElement("p");
      note.className = "decimated";
      note.textContent = "Decimated for display: " + dec.map(function (s) {
        return s.label + " (" + s.points + " points)";
      }).join(", ") + " — each pixel column keeps its minimum and maximum, so spikes stay visible.";
      div.appendChild(note);
    }
    var plot = document.createElement("div");
    div.appendChild(plot);
    section.appendChild(div);

    var ps = { id: p.id, series: [], bands: 0 };
    state.panels.push(ps);
    var first = true, snap = null;
    function image(u) {
      return u.ctx.getImageData(0, 0, u.ctx.canvas.width, u.ctx.canvas.height).data;
    }
    var opts = {
      width: chartWidth(section),
      height: 240,
      scales: { x: { time: false } },
      cursor: { sync: { key: "statexec" }, drag: { x: true, y: false } },
      legend: { live: true },
      series: [{ label: "time", value: function (u, v) { return v == null ? "" : v.toFixed(3) + " s"; } }]
        .concat(p.series.map(function (s, i) {
          ps.series.push({ label: s.label, shown: s.show, points: s.values.filter(function (v) { return v != null; }).length, pixels: 0 });
          return {
            label: s.label, show: s.show, stroke: colour(s, i), width: 1.5,
            dash: multi ? dashes[s.style % dashes.length] : [], spanGaps: true,
            points: { show: s.values.length < 60 },
            value: function (u, v) { return fmt(v, p.unit); }
          };
        })),
      axes: [
        { label: "seconds" + (data.syncPair ? " (common axis)" : " since the command's start") },
        // The title names the unit; the axis keeps only the bytes' prefix.
        { size: 90, values: function (u, vals) {
          var unit = p.unit === "bytes" || p.unit === "bytes/s" || p.unit === "s" ? p.unit : "";
          return vals.map(function (v) { return fmt(v, unit); });
        } }
      ],
      hooks: {
        drawClear: [function (u) {
          var n = shadePhases(u);
          if (first) ps.bands = n;
        }],
        // On the first draw, count the pixels each series changed on the
        // canvas: the proof that every series was drawn.
        drawAxes: [function (u) { if (first) snap = image(u); }],
        drawSeries: [function (u, si) {
          if (!first || !snap) return;
          // Count only changed pixels close to the series' own colour
          // (antialiased edges blend; markers' white fill does not count).
          var rgb = hexRGB(u.series[si].stroke()), now = image(u), n = 0;
          for (var k = 0; k < now.length; k += 4) {
            if (now[k] === snap[k] && now[k + 1] === snap[k + 1] && now[k + 2] === snap[k + 2] && now[k + 3] === snap[k + 3]) continue;
            if (now[k + 3] > 128 && Math.abs(now[k] - rgb[0]) < 48 && Math.abs(now[k + 1] - rgb[1]) < 48 && Math.abs(now[k + 2] - rgb[2]) < 48) n++;
          }
          ps.series[si - 1].pixels = n;
          snap = now;
        }],
        draw: [function () { first = false; snap = null; }],
        setScale: [syncZoom]
      }
    };
    var cols = [p.x].concat(p.series.map(function (s) { return s.values; }));
    charts.push(new uPlot(opts, cols, plot));
  }

  data.panels.forEach(function (p) {
    try {
      drawPanel(p);
    } catch (e) {
      state.errors.push("panel " + p.id + ": " + e);
    }
  });
  ["command", "host", "other"].forEach(function (id) {
    var s = document.getElementById(id);
    if (!s.querySelector(".panel")) s.className = "empty";
  });
  window.addEventListener("resize", function () {
    charts.forEach(function (c) {
      c.setSize({ width: chartWidth(c.root.parentNode.parentNode), height: 240 });
    });
  });
  // uPlot draws in a microtask after construction; publish after it.
  setTimeout(function () {
    state.ready = true;
    publish();
  }, 0);
})();
