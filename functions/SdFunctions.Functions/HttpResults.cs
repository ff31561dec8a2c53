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

    public static ContentResult Problem(Problem problem, HttpRequest request) => new()
    {
        StatusCode = problem.Status,
        ContentType = Jobs.Problem.ContentType,
        Content = JsonSerializer.Serialize(problem with { Instance = problem.Instance ?? request.Path.Value }, JobJson.Options),
    };

    /// <summary>
    /// Runs a function body and turns refusals into their problem and storage outages into a 503 problem, so that
    /// every error a client sees is application/problem+json.
    /// </summary>
    public static async Task<IActionResult> HandleAsync(HttpRequest request, ILogger logger, Func<Task<IActionResult>> body)
    {
        try
        {
            return await body();
        }
        catch (ProblemException e)
        {
            return Problem(e.Problem, request);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e))
        {
            logger.LogError(e, "Storage failed while serving {Method} {Path}", request.Method, request.Path);
            return Problem(new Problem
            {
                Type = ProblemTypes.ServiceUnavailable, Title = "Service unavailable", Status = 503,
                Detail = "Storage is not reachable right now; try again shortly.",
            }, request);
        }
    }

    /// <summary>The API's base URL as the client reached it (for Location headers and the image route).</summary>
    public static string BaseUrl(HttpRequest request) => $"{request.Scheme}://{request.Host}{request.PathBase}";

    public static string JobUrl(HttpRequest request, string id) => $"{BaseUrl(request)}/api/generations/{id}";
}
