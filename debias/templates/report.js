// Click a column header to sort by it (numbers by data-sort, text otherwise). Without JavaScript
// the table stays in its printed order: by Δ, largest first.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.classList.add("sortable");
    th.tabIndex = 0;
    var sort = function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (x, y) {
        var a = x.cells[col].getAttribute("data-sort") || "", b = y.cells[col].getAttribute("data-sort") || "";
        if (a === "" || b === "") return (a === "") - (b === "");  // empty last
        var na = Number(a), nb = Number(b);
        var c = isNaN(na) || isNaN(nb) ? a.localeCompare(b) : na - nb;
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
  });
});
// Printing shows collapsed details too.
window.addEventListener("beforeprint", function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
});
