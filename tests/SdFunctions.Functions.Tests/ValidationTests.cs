using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>Every submit rule gives a 400/413/415 problem naming the field, and nothing is queued.</summary>
[Collection(AzuriteCollection.Name)]
public class ValidationTests
{
    public static TheoryData<string, string> InvalidBodies() => new()
    {
        { """{}""", "prompt" },
        { """{"prompt": ""}""", "prompt" },
        { """{"prompt": "   "}""", "prompt" },
        { $$"""{"prompt": "{{new string('a', 1001)}}"}""", "prompt" },
        { $$"""{"prompt": "x", "negativePrompt": "{{new string('a', 1001)}}"}""", "negativePrompt" },
        { """{"prompt": "x", "steps": 0}""", "steps" },
        { """{"prompt": "x", "steps": 151}""", "steps" },
        { """{"prompt": "x", "steps": 2.5}""", "steps" },
        { """{"prompt": "x", "guidanceScale": -0.1}""", "guidanceScale" },
        { """{"prompt": "x", "guidanceScale": 30.5}""", "guidanceScale" },
        { """{"prompt": "x", "seed": -1}""", "seed" },
        { """{"prompt": "x", "seed": 9007199254740992}""", "seed" },
        { """{"prompt": "x", "scheduler": "heun"}""", "scheduler" },
        { """{"prompt": "x", "width": 512}""", "width" },
        { """{"prompt": "x", "height": 128}""", "height" },
        { """{"prompt": "x", "nsfw": true}""", "nsfw" },
        { """{"prompt": 42}""", "prompt" },
        { """{"prompt": "x", "steps": "1"}""", "steps" },
        { """{"prompt": "x", "seed": "5"}""", "seed" },
        { """{"prompt": "x", "guidanceScale": "7.5"}""", "guidanceScale" },
        { """{"prompt": "x", "steps": 2, "steps": 3}""", "steps" },
        { """{"prompt": "x", "Prompt": "y"}""", "Prompt" },
        { """{"prompt": "\u0000\u0001\u001b"}""", "prompt" },
        { """{"prompt": " \u200b\t\u0000 "}""", "prompt" },
    };

    [Theory, MemberData(nameof(InvalidBodies))]
    public async Task InvalidFieldsAreNamed(string body, string field)
    {
        await using var app = await TestApp.StartAsync();
        var (result, _) = await app.SubmitAsync(body);
        AssertFieldRefused(result, field);
        Assert.Equal("/api/generations", Body(result).GetProperty("instance").GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task EveryBrokenRuleIsReportedAtOnceAndTheAllowedSizeIsListed()
    {
        await using var app = await TestApp.StartAsync();
        var (result, _) = await app.SubmitAsync("""{"prompt": "", "steps": 0, "width": 1024, "scheduler": "nope"}""");
        var problem = AssertProblem(result, 400, ProblemTypes.Validation);
        var errors = problem.GetProperty("errors").EnumerateObject().Select(p => p.Name).Order();
        Assert.Equal(["prompt", "scheduler", "steps", "width"], errors);
        Assert.Equal("256x256", problem.GetProperty("allowed")[0].GetString());
    }

    [Theory]
    [InlineData("{not json", ProblemTypes.MalformedJson)]
    [InlineData("[1, 2]", ProblemTypes.MalformedJson)]
    [InlineData("null", ProblemTypes.MalformedJson)]
    [InlineData("", ProblemTypes.MalformedJson)]
    public async Task MalformedJsonIsA400(string body, string type)
    {
        await using var app = await TestApp.StartAsync();
        var (result, _) = await app.SubmitAsync(body);
        AssertProblem(result, 400, type);
    }

    [Theory]
    [InlineData("application/x-www-form-urlencoded")]
    [InlineData("application/jsonx")]
    [InlineData("application/json-patch+json")]
    [InlineData("text/json")]
    [InlineData("application/json; charset=latin1")]
    public async Task OtherMediaTypesAreRefused(string contentType)
    {
        await using var app = await TestApp.StartAsync();
        var result = (ContentResult)await app.Api.Submit(TestApp.Request("POST", "/api/generations", """{"prompt": "x"}""", contentType), default);
        AssertProblem(result, 415, ProblemTypes.UnsupportedMediaType);
    }

    [Theory]
    [InlineData("application/json")]
    [InlineData("Application/JSON; charset=UTF-8")]
    public async Task JsonIsAcceptedInAnyCaseAndWithAByteOrderMark(string contentType)
    {
        await using var app = await TestApp.StartAsync();
        var req = TestApp.Request("POST", "/api/generations", """{"prompt": "x", "steps": 2}""", contentType);
        req.Body = new MemoryStream([0xEF, 0xBB, 0xBF, .. System.Text.Encoding.UTF8.GetBytes("""{"prompt": "x", "steps": 2}""")]);
        var result = (ContentResult)await app.Api.Submit(req, default);
        Assert.Equal(202, result.StatusCode);
    }

    [Fact]
    public async Task AHugeBodyIsA413OfItsOwnType()
    {
        await using var app = await TestApp.StartAsync();
        string huge = JsonSerializer.Serialize(new { prompt = new string('a', 70_000) });
        var tooBig = (ContentResult)await app.Api.Submit(TestApp.Request("POST", "/api/generations", huge), default);
        AssertProblem(tooBig, 413, ProblemTypes.RequestTooLarge);
    }
}
