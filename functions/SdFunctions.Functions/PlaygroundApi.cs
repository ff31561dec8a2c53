using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>
/// GET /api/playground (anonymous): a page to try the API in a browser, and its script and styles beside it. The files
/// are embedded in the app (Playground/); the page holds no secret: the user pastes a function key, which only the
/// browser keeps.
/// </summary>
public sealed class PlaygroundApi
{
    private const string PageFile = "index.html";

    /// <summary>The page and its assets by file name, with their content types.</summary>
    private static readonly Dictionary<string, (byte[] Bytes, string ContentType)> Files = new(StringComparer.Ordinal)
    {
        [PageFile] = (Read(PageFile), "text/html; charset=utf-8"),
        ["playground.js"] = (Read("playground.js"), "text/javascript; charset=utf-8"),
        ["playground.css"] = (Read("playground.css"), "text/css; charset=utf-8"),
    };

    private static byte[] Read(string file) => EmbeddedFiles.Read($"SdFunctions.Functions.Playground.{file}");

    // Only our own script, styles and API; images only from what the page fetched itself (blob:) or stored (data:).
    private const string ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; " +
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

    [Function("Playground")]
    public IActionResult Page([HttpTrigger(AuthorizationLevel.Anonymous, "get", Route = "playground")] HttpRequest req) =>
        Serve(req, PageFile);

    [Function("PlaygroundAsset")]
    public IActionResult Asset([HttpTrigger(AuthorizationLevel.Anonymous, "get", Route = "playground/{file}")] HttpRequest req, string file) =>
        file != PageFile && Files.ContainsKey(file)
            ? Serve(req, file)
            : HttpResults.Problem(new Problem
            {
                Type = ProblemTypes.NotFound, Title = "Not found", Status = StatusCodes.Status404NotFound,
                Detail = $"The playground has no file {file}; it has {string.Join(" and ", Files.Keys.Where(k => k != PageFile))}.",
            }, req);

    private static FileContentResult Serve(HttpRequest req, string file)
    {
        var headers = req.HttpContext.Response.Headers;
        headers.ContentSecurityPolicy = ContentSecurityPolicy;
        headers.XContentTypeOptions = "nosniff";
        headers["Referrer-Policy"] = "no-referrer";
        headers.CacheControl = "no-cache"; // revalidate, so a deployment's new page is seen at once
        var (bytes, contentType) = Files[file];
        return new FileContentResult(bytes, contentType);
    }
}
