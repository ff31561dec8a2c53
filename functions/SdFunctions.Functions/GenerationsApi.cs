using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Azure.Functions.Worker;
using Microsoft.Extensions.Logging;
using Microsoft.Net.Http.Headers;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>
/// The HTTP API: submit, poll, download, cancel. Each function binds the request, calls
/// <see cref="GenerationService"/> and maps the result or its problem to a response.
/// </summary>
public sealed class GenerationsApi(GenerationService service, ILogger<GenerationsApi> logger)
{
    private const int MaxBodyBytes = 64 * 1024;
    private const string RetryAfterSeconds = "2";

    [Function("SubmitGeneration")]
    public async Task<IActionResult> Submit(
        [HttpTrigger(AuthorizationLevel.Function, "post", Route = "generations")] HttpRequest req, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, async () =>
        {
            if (req.ContentType is { Length: > 0 } type && !IsJson(type))
                return HttpResults.Problem(new Problem
                {
                    Type = ProblemTypes.UnsupportedMediaType, Title = "Unsupported media type", Status = 415,
                    Detail = "Send the request as application/json (UTF-8).",
                }, req);
            byte[]? body = await ReadBodyAsync(req, ct);
            if (body is null)
                return HttpResults.Problem(new Problem
                {
                    Type = ProblemTypes.RequestTooLarge, Title = "Request too large", Status = 413, Detail = $"The body may be at most {MaxBodyBytes} bytes.",
                }, req);

            var (job, _) = await service.SubmitAsync(WithoutBom(body), req.Headers["Idempotency-Key"].FirstOrDefault(), ct, Caller(req));
            req.HttpContext.Response.Headers.Location = HttpResults.JobUrl(req, job.Id);
            req.HttpContext.Response.Headers.RetryAfter = RetryAfterSeconds;
            return HttpResults.Json(JobResource.From(job, null), StatusCodes.Status202Accepted);
        });

    [Function("GetGeneration")]
    public async Task<IActionResult> Get(
        [HttpTrigger(AuthorizationLevel.Function, "get", Route = "generations/{id}")] HttpRequest req, string id, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, async () =>
        {
            var job = await service.GetResourceAsync(id, HttpResults.JobUrl(req, id) + "/image", ct);
            if (job.Status is JobStatus.Queued or JobStatus.Running) req.HttpContext.Response.Headers.RetryAfter = RetryAfterSeconds;
            return HttpResults.Json(job);
        });

    [Function("GetGenerationImage")]
    public async Task<IActionResult> GetImage(
        [HttpTrigger(AuthorizationLevel.Function, "get", Route = "generations/{id}/image")] HttpRequest req, string id, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, async () =>
        {
            var png = await service.GetImageAsync(id, ct);
            return new FileContentResult(png.ToArray(), "image/png") { FileDownloadName = $"{id}.png" };
        });

    [Function("CancelGeneration")]
    public async Task<IActionResult> Cancel(
        [HttpTrigger(AuthorizationLevel.Function, "post", Route = "generations/{id}/cancel")] HttpRequest req, string id, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, async () =>
        {
            var job = await service.CancelAsync(id, ct);
            // Queued: canceled now (200). Running: the worker stops at its next check (202).
            return HttpResults.Json(JobResource.From(job, null), job.Status == JobStatus.Canceled ? StatusCodes.Status200OK : StatusCodes.Status202Accepted);
        });

    // application/json exactly (any case), with no charset or UTF-8: JSON is UTF-8 (RFC 8259).
    private static bool IsJson(string contentType) =>
        MediaTypeHeaderValue.TryParse(contentType, out var media)
        && media.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)
        && (media.Charset.Length == 0 || media.Charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase));

    // Some clients (PowerShell 5, Notepad) start UTF-8 with a byte order mark, which RFC 8259 lets a parser ignore.
    private static ReadOnlyMemory<byte> WithoutBom(byte[] body) =>
        body.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? body.AsMemory(3) : body;

    /// <summary>The caller's scope for idempotency keys: the function key it presented and, with App Service auth, its principal.</summary>
    private static string Caller(HttpRequest req) => CallerScope.From(
        req.Headers["x-functions-key"].FirstOrDefault() ?? req.Query["code"].FirstOrDefault(),
        req.Headers["X-MS-CLIENT-PRINCIPAL-ID"].FirstOrDefault());

    // Reads at most MaxBodyBytes; null when the body is larger.
    private static async Task<byte[]?> ReadBodyAsync(HttpRequest req, CancellationToken ct)
    {
        using var buffer = new MemoryStream();
        var chunk = new byte[8192];
        int read;
        while ((read = await req.Body.ReadAsync(chunk, ct)) > 0)
        {
            if (buffer.Length + read > MaxBodyBytes) return null;
            buffer.Write(chunk, 0, read);
        }
        return buffer.ToArray();
    }
}
