// "Print" links open the browser's print dialog (a file, not an inline handler: the CSP allows no inline script).
document.querySelectorAll("[data-print]").forEach(function (el) {
  el.addEventListener("click", function (event) { event.preventDefault(); window.print(); });
});
