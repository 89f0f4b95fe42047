// Draws every [data-chart] element from the JSON that the page embeds next to it
// (<script type="application/json" id="NAME-data">: data, never executed), with the
// chart configuration the server chose (dashboards/figures.py CHART_CONFIG).
// A file, not an inline script, so the Content-Security-Policy needs no 'unsafe-inline'.
document.querySelectorAll("[data-chart]").forEach(function (el) {
  var source = document.getElementById(el.dataset.chart + "-data");
  if (!source) { return; }
  var figure = JSON.parse(source.textContent);
  Plotly.newPlot(el, figure.data, figure.layout, figure.config);
});
