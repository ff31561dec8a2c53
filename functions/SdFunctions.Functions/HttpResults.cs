using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.Logging;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>JSON and RFC 9457 problem responses, serialized with the API's JSON settings.</summary>
internal static class HttpResults
{
    public static ContentResult Json(object value, int status = StatusCodes.Status200OK) => new()
    {
        StatusCode = status, ContentType = "application/json; charset=utf-8", Content = JsonSerializer.Serialize(value, JobJson.Options),
    };

    /// <summary>Seconds a client should wait before retrying after a 503.</summary>
    public const string RetryAfterOutageSeconds = "10";

    public static ContentResult Problem(Problem problem, HttpRequest request)
    {
        if (problem.Status == StatusCodes.Status503ServiceUnavailable) request.HttpContext.Response.Headers.RetryAfter = RetryAfterOutageSeconds;
        return new()
        {
            StatusCode = problem.Status,
            ContentType = Jobs.Problem.ContentType,
            Content = JsonSerializer.Serialize(problem with { Instance = problem.Instance ?? request.Path.Value }, JobJson.Options),
        };
    }

    /// <summary>
    /// Runs a function body and turns refusals into their problem, storage outages and timeouts (the SDK's, or the request's
    /// <paramref name="storageBudget"/> running out) into a 503 problem (with Retry-After) and anything else into a 500 problem
    /// that names only a correlation id, so that every error a client sees is application/problem+json and none shows our internals.
    /// </summary>
    public static async Task<IActionResult> HandleAsync(HttpRequest request, ILogger logger, TimeSpan storageBudget, CancellationToken ct,
        Func<TimeBudget, Task<IActionResult>> body)
    {
        using var budget = new TimeBudget(storageBudget, ct, request.HttpContext.RequestAborted);
        try
        {
            return await body(budget);
        }
        catch (OperationCanceledException e) when (budget.Expired)
        {
            logger.LogError(e, "Storage did not answer {Method} {Path} within {Seconds} s", request.Method, request.Path, storageBudget.TotalSeconds);
            return Problem(ServerProblems.Unavailable($"Storage did not answer within {storageBudget.TotalSeconds:0} s; try again shortly."), request);
        }
        catch (ProblemException e)
        {
            return Problem(e.Problem, request);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e))
        {
            logger.LogError(e, "Storage failed while serving {Method} {Path}", request.Method, request.Path);
            return Problem(ServerProblems.Unavailable("Storage is not reachable right now; try again shortly."), request);
        }
        catch (OperationCanceledException) when (request.HttpContext.RequestAborted.IsCancellationRequested || ct.IsCancellationRequested)
        {
            throw; // the client went away: there is no one to answer
        }
        catch (Exception e)
        {
            string correlationId = ServerProblems.NewCorrelationId();
            logger.LogError(e, "Unexpected error serving {Method} {Path} (correlation id {CorrelationId})", request.Method, request.Path, correlationId);
            return Problem(ServerProblems.Internal(correlationId), request);
        }
    }

    /// <summary>The API's base URL as the client reached it (for Location headers and the image route).</summary>
    public static string BaseUrl(HttpRequest request) => $"{request.Scheme}://{request.Host}{request.PathBase}";

    public static string JobUrl(HttpRequest request, string id) => $"{BaseUrl(request)}/api/generations/{id}";
}

/// <summary>
/// The time an HTTP request may spend on storage (Jobs:HttpTimeBudget), counted from its first use (after the body is read, so
/// a slow upload does not spend it), or the client going away, whichever comes first. Each function's storage calls take
/// <see cref="Token"/>: a black-holed store answers 503 within the budget instead of after the SDK's retries (minutes).
/// </summary>
internal sealed class TimeBudget(TimeSpan limit, CancellationToken hostStopping, CancellationToken clientGone) : IDisposable
{
    private CancellationTokenSource? _source;

    public CancellationToken Token
    {
        get
        {
            if (_source is null)
            {
                _source = CancellationTokenSource.CreateLinkedTokenSource(hostStopping, clientGone);
                _source.CancelAfter(limit);
            }
            return _source.Token;
        }
    }

    /// <summary>The budget ran out (not the client nor the host).</summary>
    public bool Expired => _source is { IsCancellationRequested: true } && !hostStopping.IsCancellationRequested && !clientGone.IsCancellationRequested;

    public void Dispose() => _source?.Dispose();
}
