using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Azure.Functions.Worker;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>
/// The HTTP API: submit, poll, download, cancel. Each function binds the request, calls
/// <see cref="GenerationService"/> and maps the result or its problem to a response.
/// </summary>
public sealed class GenerationsApi(GenerationService service, IOptions<JobsOptions> options, ILogger<GenerationsApi> logger)
{
    private const string RetryAfterSeconds = "2";
    private int MaxBodyBytes => options.Value.MaxImageRequestBytes; // the service holds requests without an image to MaxRequestBytes

    [Function("SubmitGeneration")]
    public async Task<IActionResult> Submit(
        [HttpTrigger(AuthorizationLevel.Function, "post", Route = "generations")] HttpRequest req, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, options.Value.HttpTimeBudget, ct, async budget =>
        {
            // Our own bounds refuse a large body; Kestrel's (30 MB) would cut the connection instead, mid-drain (see TooLargeAsync).
            if (req.HttpContext.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = MaxDrainBytes;
            bool multipart = req.ContentType is { Length: > 0 } type && IsMultipart(type);
            if (req.ContentType is { Length: > 0 } contentType && !multipart && !IsJson(contentType))
                return HttpResults.Problem(new Problem
                {
                    Type = ProblemTypes.UnsupportedMediaType, Title = "Unsupported media type", Status = 415,
                    Detail = "Send the request as application/json (UTF-8), or as multipart/form-data with a request part (JSON) and an image part.",
                }, req);
            if (req.ContentLength > MaxBodyBytes) return await TooLargeAsync(req, ct);
            byte[]? body;
            ImageUpload? upload = null;
            if (multipart)
            {
                var form = await ReadFormAsync(req, ct);
                if (form is null) return await TooLargeAsync(req, ct);
                (body, upload) = await MultipartRequest.ReadAsync(form, ct);
            }
            else
            {
                body = await ReadBodyAsync(req, ct);
                if (body is null) return await TooLargeAsync(req, ct);
            }

            var (job, _) = await service.SubmitAsync(WithoutBom(body), req.Headers["Idempotency-Key"].FirstOrDefault(), budget.Token, Caller(req), upload);
            req.HttpContext.Response.Headers.Location = HttpResults.JobUrl(req, job.Id);
            req.HttpContext.Response.Headers.RetryAfter = RetryAfterSeconds;
            return HttpResults.Json(JobResource.From(job, null), StatusCodes.Status202Accepted);
        });

    [Function("GetGeneration")]
    public async Task<IActionResult> Get(
        [HttpTrigger(AuthorizationLevel.Function, "get", Route = "generations/{id}")] HttpRequest req, string id, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, options.Value.HttpTimeBudget, ct, async budget =>
        {
            var job = await service.GetResourceAsync(id, HttpResults.JobUrl(req, id) + "/image", budget.Token);
            if (job.Status is JobStatus.Queued or JobStatus.Running) req.HttpContext.Response.Headers.RetryAfter = RetryAfterSeconds;
            return HttpResults.Json(job);
        });

    [Function("GetGenerationImage")]
    public async Task<IActionResult> GetImage(
        [HttpTrigger(AuthorizationLevel.Function, "get", Route = "generations/{id}/image")] HttpRequest req, string id, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, options.Value.HttpTimeBudget, ct, async budget =>
        {
            string? indexText = req.Query["index"].FirstOrDefault();
            if (req.Query["index"].Count > 1 || (indexText is not null && !(int.TryParse(indexText, System.Globalization.NumberStyles.None, null, out _))))
                return HttpResults.Problem(new Problem
                {
                    Type = ProblemTypes.Validation, Title = "Invalid request", Status = 400, Detail = "index is the image's number: a whole number from 0, given once.",
                    Errors = new Dictionary<string, string[]> { ["index"] = ["A whole number from 0."] },
                }, req);
            var image = await service.GetImageAsync(id, indexText is null ? 0 : int.Parse(indexText, System.Globalization.CultureInfo.InvariantCulture), budget.Token);
            return new FileContentResult(image.File.ToArray(), image.ContentType) { FileDownloadName = image.FileName };
        });

    [Function("CancelGeneration")]
    public async Task<IActionResult> Cancel(
        [HttpTrigger(AuthorizationLevel.Function, "post", Route = "generations/{id}/cancel")] HttpRequest req, string id, CancellationToken ct) =>
        await HttpResults.HandleAsync(req, logger, options.Value.HttpTimeBudget, ct, async budget =>
        {
            var job = await service.CancelAsync(id, budget.Token);
            // Queued: canceled now (200). Running: the worker stops at its next check (202).
            return HttpResults.Json(JobResource.From(job, null), job.Status == JobStatus.Canceled ? StatusCodes.Status200OK : StatusCodes.Status202Accepted);
        });

    // Reading past the bound costs bandwidth, not memory; beyond this a client is not sending a picture by mistake.
    private const long MaxDrainBytes = 128L * 1024 * 1024;
    private static readonly TimeSpan MaxDrainTime = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The 413 problem, after reading what is left of the body: under the Functions host an answer sent while the client is still
    /// sending breaks the host's proxy, and the client gets a bare 500 instead (a 50 MB chunked upload did). The rest is
    /// discarded as it arrives, up to <see cref="MaxDrainBytes"/> or <see cref="MaxDrainTime"/>.
    /// </summary>
    private async Task<ContentResult> TooLargeAsync(HttpRequest req, CancellationToken ct)
    {
        using var drain = CancellationTokenSource.CreateLinkedTokenSource(ct);
        drain.CancelAfter(MaxDrainTime);
        var buffer = new byte[64 * 1024];
        try
        {
            for (long read = 0; read < MaxDrainBytes;)
            {
                int n = await req.Body.ReadAsync(buffer, drain.Token);
                if (n == 0) break;
                read += n;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && !ct.IsCancellationRequested) { } // answer anyway
        return HttpResults.Problem(new Problem
        {
            Type = ProblemTypes.RequestTooLarge, Title = "Request too large", Status = 413,
            Detail = $"The body may be at most {options.Value.MaxRequestBytes} bytes, or {MaxBodyBytes} bytes with an image.",
        }, req);
    }

    private static bool IsMultipart(string contentType) =>
        MediaTypeHeaderValue.TryParse(contentType, out var media) && media.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase);

    private const int MaxFormParts = 8, MaxPartHeaderBytes = 16 * 1024;

    // The whole form within the body bound; null when it is larger. A form that does not parse is a 400 in our words (the
    // reader's own, "Unexpected end of Stream, the content may have already been read by another component", help no one).
    private async Task<IFormCollection?> ReadFormAsync(HttpRequest req, CancellationToken ct)
    {
        try
        {
            return await req.ReadFormAsync(new FormOptions
            {
                MultipartBodyLengthLimit = MaxBodyBytes, ValueLengthLimit = options.Value.MaxRequestBytes, ValueCountLimit = MaxFormParts,
                MultipartHeadersLengthLimit = MaxPartHeaderBytes, BufferBodyLengthLimit = MaxBodyBytes,
            }, ct);
        }
        catch (InvalidDataException e) when (e.Message.Contains("count limit", StringComparison.OrdinalIgnoreCase))
        {
            throw Malformed($"A multipart request has at most {MaxFormParts} parts: a '{MultipartRequest.RequestPart}' part (JSON) and an '{MultipartRequest.ImagePart}' part.");
        }
        catch (InvalidDataException e) when (e.Message.Contains("headers length limit", StringComparison.OrdinalIgnoreCase) || e.Message.Contains("Line length limit", StringComparison.OrdinalIgnoreCase))
        {
            throw Malformed($"A part's headers may hold at most {MaxPartHeaderBytes / 1024} KB.");
        }
        catch (InvalidDataException e) when (e.Message.Contains("limit", StringComparison.OrdinalIgnoreCase)) { return null; } // the body or a value is too large
        catch (Exception e) when (e is InvalidDataException or IOException)
        {
            throw Malformed("The multipart body could not be read: it is malformed, or ends before its closing boundary.");
        }

        static ProblemException Malformed(string detail) => new(new Problem
        {
            Type = ProblemTypes.MalformedJson, Title = "Malformed request", Status = 400, Detail = detail,
        });
    }

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
    private async Task<byte[]?> ReadBodyAsync(HttpRequest req, CancellationToken ct)
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
