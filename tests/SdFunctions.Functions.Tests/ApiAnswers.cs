using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

namespace SdFunctions.Functions.Tests;

/// <summary>Reading the API's answers in tests: the JSON body, the job id a submission answered, RFC 9457 problems.</summary>
internal static class ApiAnswers
{
    public static JsonElement Body(ContentResult result) => JsonDocument.Parse(result.Content!).RootElement;

    /// <summary>The id of the job a 202 (or an idempotent replay's 200) answered.</summary>
    public static string IdOf(ContentResult submitted) => Body(submitted).GetProperty("id").GetString()!;

    /// <summary>The step a job resource's progress has reached.</summary>
    public static int StepOf(JsonElement job) => job.GetProperty("progress").GetProperty("step").GetInt32();

    /// <summary>Asserts an RFC 9457 problem of this status and type with a title, and returns it.</summary>
    public static JsonElement AssertProblem(ContentResult result, int status, string type)
    {
        Assert.Equal(status, result.StatusCode);
        Assert.Equal("application/problem+json", result.ContentType);
        var problem = Body(result);
        Assert.Equal(type, problem.GetProperty("type").GetString());
        Assert.Equal(status, problem.GetProperty("status").GetInt32());
        Assert.False(string.IsNullOrEmpty(problem.GetProperty("title").GetString()));
        return problem;
    }

    /// <summary>Asserts a 400 validation problem that names <paramref name="field"/>, and returns that field's messages.</summary>
    public static JsonElement AssertFieldRefused(ContentResult result, string field)
    {
        var problem = AssertProblem(result, 400, ProblemTypes.Validation);
        Assert.True(problem.GetProperty("errors").TryGetProperty(field, out var messages), $"no error for '{field}' in {result.Content}");
        return messages;
    }
}
